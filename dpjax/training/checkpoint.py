"""Checkpoints that carry the whole run: parameters, optimizer state (noise key
included), the logical step / sampler position, the privacy ledger, a config
fingerprint and -- for private runs -- the run secret (:class:`~dpjax.randomness.RunSecrets`),
which is written nowhere else.

Layout under ``<workdir>/checkpoints/<step>/``: an orbax ``state`` item holding
``{"params", "opt", "step"}`` (typed PRNG keys stored as their raw key data) and a JSON
``meta`` item. A run whose frozen leaves never train (one phase: DP-BiTFiT, DP-LoRA,
...) saves only its trained leaves (:meth:`Checkpointer.save` with ``base=``; an adapter
checkpoint is kilobytes to megabytes) and a digest of the frozen ones, which a resumed
run takes from its task and checks against that digest (:func:`base_digest`). Restoring
checks the fingerprint and every array's shape and dtype *before* reading arrays, and
turns unreadable checkpoints into a :class:`CheckpointError` that says which directory
and why.

Example:
    >>> import tempfile, jax.numpy as jnp, optax, dpjax
    >>> from dpjax.train_state import init_state
    >>> state = init_state({"d": {"bias": jnp.zeros(2)}}, None, optax.sgd(0.1))
    >>> ledger = dpjax.accounting.PrivacyLedger()
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), keep=2, fingerprint="abc")
    >>> ckpt.save(state, phase=0, ledger=ledger.to_dict())
    >>> restored, meta = ckpt.restore(state)
    >>> ckpt.latest_step(), meta["phase"], meta["ledger"] == ledger.to_dict()
    (0, 0, True)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dpjax.partition import leaf_paths, path_to_str
from dpjax.randomness import RunSecrets
from dpjax.train_state import TrainState

__all__ = ["CheckpointError", "Checkpointer", "base_digest", "fingerprint"]

#: Config keys that may change between a run and its resumption.
OPERATIONAL_KEYS = (
    "eval_every",
    "eval_batch_size",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "trim_padding",
    "mesh",
    "distributed",
    "description",
)
_FORMAT = 2  # 2: params stored by leaf index; trained-only checkpoints


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable or does not belong to this run."""


def fingerprint(config: Mapping[str, Any]) -> str:
    """SHA-256 of the config without operational keys (JSON, sorted keys)."""
    trimmed = {k: v for k, v in dict(config).items() if k not in OPERATIONAL_KEYS}
    privacy = dict(trimmed.get("privacy") or {})
    privacy.pop("max_epsilon", None)  # a budget may be raised on resume; the ledger decides
    # The checkpoint holds the run's secret; a user-supplied seed is checked against it
    # (dpjax.training.secrets) and is never written, so config.json can rebuild the run.
    privacy.pop("noise_seed", None)
    if privacy:
        trimmed["privacy"] = privacy
    blob = json.dumps(trimmed, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def base_digest(frozen: Any) -> str:
    """A digest of the frozen leaves: paths, shapes, dtypes and each leaf's sum and sum of
    squares (float64, computed where the leaf lives: works for sharded leaves too). It
    tells base weights apart (a different checkpoint, a different init); it is not a
    cryptographic commitment to every bit."""
    h = hashlib.sha256()
    for path, x in _paths(frozen):
        x64 = jnp.asarray(x).astype(jnp.float32)
        stats = np.asarray([float(jnp.sum(x64)), float(jnp.sum(x64 * x64))], np.float64)
        h.update(json.dumps([path_to_str(path), list(x.shape), str(x.dtype)]).encode())
        h.update(np.round(stats, 6).tobytes())
    return h.hexdigest()[:32]


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _spec(x: Any) -> list[Any]:
    return [list(np.shape(x)), str(x.dtype)]


class Checkpointer:
    """Saves and restores :class:`TrainState` plus run metadata with orbax.

    Args:
      directory: checkpoint directory (created on first save).
      keep: number of most recent checkpoints kept.
      fingerprint: the run's config fingerprint (see :func:`fingerprint`).
    """

    def __init__(self, directory: str, *, keep: int, fingerprint: str) -> None:
        self.directory = os.path.abspath(directory)
        self.fingerprint = fingerprint
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or ``None``."""
        return self._manager.latest_step()

    def save(self, state: TrainState, *, base: str | None = None, **meta: Any) -> None:
        """Saves ``state`` and JSON ``meta`` (phase, ledger, sampler, ...) at its step.

        With ``base`` (the :func:`base_digest` of ``state.frozen``) only the trained
        leaves are written; :meth:`restore` then takes the frozen ones from its template.
        """
        step = int(jax.device_get(state.step)) if state.step.is_fully_addressable else None
        if step is None:
            step = int(np.asarray(state.step.addressable_data(0)))
        opt = jax.tree.leaves(state.opt_state)
        saved = state.params if base is None else state.train
        if base is not None:
            meta["base"] = base
        record = {
            "format": _FORMAT,
            "step": step,
            "fingerprint": self.fingerprint,
            "params": {path_to_str(p): _spec(x) for p, x in _paths(saved)},
            "opt": [_spec(x) for x in opt],
            "opt_keys": [i for i, x in enumerate(opt) if _is_key(x)],
            **meta,
        }
        tree = {
            "params": _by_index(saved),
            "opt": {
                f"{i:04d}": jax.random.key_data(x) if _is_key(x) else x for i, x in enumerate(opt)
            },
            "step": state.step,
        }
        args = ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(record))
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of the checkpoint at ``step`` (no arrays are read)."""
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = out["meta"]
        except Exception as e:  # noqa: BLE001 - any failure means an unusable checkpoint
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} is unreadable or corrupt "
                f"({type(e).__name__}: {e}); remove it or use another workdir"
            ) from e
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else None
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} has no valid metadata (format {got!r}, "
                f"this dpjax writes {_FORMAT}); use another workdir"
            )
        return meta

    def read_secrets(self) -> RunSecrets | None:
        """The run secret of the newest checkpoint of this config, or ``None``.

        A private run's secret (noise keys, sampler seed) lives in the checkpoint's
        metadata and nowhere else, so that a resumed run continues the same streams.
        A checkpoint of another config is ignored here (resuming it fails later, clearly).
        """
        latest = self.latest_step()
        if latest is None:
            return None
        meta = self.read_meta(latest)
        if meta.get("fingerprint") != self.fingerprint or "secrets" not in meta:
            return None
        return RunSecrets.from_checkpoint(meta["secrets"])

    def restore(self, template: TrainState, step: int | None = None) -> tuple[TrainState, dict]:
        """Restores into arrays shaped and sharded like ``template`` (same phase).

        Raises:
          CheckpointError: unreadable checkpoint, other config, or other shapes.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        meta = self.read_meta(step)
        self.check(meta, template)
        stored = template.params if "base" not in meta else template.train
        opt = jax.tree.leaves(template.opt_state)
        tree = {
            "params": _by_index(stored),
            "opt": {
                f"{i:04d}": jax.random.key_data(x) if _is_key(x) else x for i, x in enumerate(opt)
            },
            "step": template.step,
        }
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree
        )
        try:
            out = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(
                f"checkpoint {self.directory}/{step} could not be restored "
                f"({type(e).__name__}: {e}); remove it or use another workdir"
            ) from e
        leaves = [
            jax.random.wrap_key_data(out["opt"][f"{i:04d}"], impl=jax.random.key_impl(x))
            if _is_key(x)
            else out["opt"][f"{i:04d}"]
            for i, x in enumerate(opt)
        ]
        opt_state = jax.tree.unflatten(jax.tree.structure(template.opt_state), leaves)
        restored = jax.tree.unflatten(
            jax.tree.structure(stored), [out["params"][k] for k in _by_index(stored)]
        )
        if "base" in meta:  # trained leaves only: the frozen ones are the template's
            return TrainState(out["step"], restored, template.frozen, opt_state), meta
        is_none = lambda x: x is None  # noqa: E731
        in_train = jax.tree.map(lambda x: x is not None, template.train, is_leaf=is_none)
        train = jax.tree.map(lambda m, p: p if m else None, in_train, restored)
        frozen = jax.tree.map(lambda m, p: None if m else p, in_train, restored)
        return TrainState(out["step"], train, frozen, opt_state), meta

    def check(self, meta: Mapping[str, Any], template: TrainState) -> None:
        """Raises :class:`CheckpointError` if ``meta`` does not fit this run."""
        where = f"checkpoint {self.directory}/{meta.get('step')}"
        if meta.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{where} was written by a run with a different config (fingerprint "
                f"{meta.get('fingerprint')!r}, this run {self.fingerprint!r}); resuming would "
                "mix two experiments -- use a fresh workdir"
            )
        stored = template.train if "base" in meta else template.params
        want = {path_to_str(p): _spec(x) for p, x in _paths(stored)}
        have = meta.get("params", {})
        for name in sorted(set(want) | set(have)):
            if want.get(name) != have.get(name):
                raise CheckpointError(
                    f"{where}: parameter {name!r} is {have.get(name)} in the checkpoint but "
                    f"{want.get(name)} in this run (shape, dtype)"
                )
        if "base" in meta and meta["base"] != base_digest(template.frozen):
            raise CheckpointError(
                f"{where} holds trained leaves only, trained on other frozen weights than "
                "this run's (base digest differs: another base checkpoint or init seed)"
            )
        opt = [_spec(x) for x in jax.tree.leaves(template.opt_state)]
        if opt != meta.get("opt"):
            raise CheckpointError(
                f"{where}: optimizer state does not match this run's optimizer "
                f"({len(meta.get('opt', []))} vs {len(opt)} arrays, or different shapes)"
            )

    def close(self) -> None:
        self._manager.close()


def _paths(tree: Any) -> list[tuple[tuple[str, ...], Any]]:
    return list(zip(leaf_paths(tree), jax.tree.leaves(tree), strict=True))


def _by_index(tree: Any) -> dict[str, Any]:
    """The leaves of ``tree`` (``None`` leaves skipped) keyed by their index in leaf
    order, which the metadata's ``params`` list names and checks before a restore."""
    return {f"{i:05d}": x for i, x in enumerate(jax.tree.leaves(tree))}
