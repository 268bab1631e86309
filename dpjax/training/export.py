"""Export a run's trained model for inference: adapters merged, released constants beside.

``python -m experiments.export --workdir=RUN --out=DIR`` (or :func:`export`) rebuilds the
run from the ``config.json`` the trainer wrote in ``RUN``, restores its checkpoint (the
latest, or ``step``) and writes

* ``DIR/params.safetensors``: every parameter under its ``/``-joined path, LoRA adapters
  folded into their base kernels (``W + (alpha/r) A B``: the model then runs without
  interception), and the task's released constants (``Task.constants``, e.g. the text
  head's private feature mean) under ``constants/<name>``. :func:`load` reads it back.
* ``DIR/export.json``: what it holds: method, task, step, epsilon and delta spent (from
  the checkpoint's ledger), whether adapters were merged. Never the run's secrets.
* with ``hf=True``: ``DIR/hf/`` with ``config.json`` + ``model.safetensors`` under
  Hugging Face names (:func:`dpjax.models.convert.save_pretrained`), for tasks whose model
  is a Hugging Face architecture with its own head (GPT-2 LM, BERT/RoBERTa MLM or
  classification); a task with a head of its own (the mean-pooled text head) is refused.

Rebuilding a private run's task draws its releases (feature mean, probe) from the
secrets in the checkpoint, so they are the same values the run used: nothing new is
released.

Example: the checkpoints guide of the docs trains a toy run, exports it with
``export(workdir, out)`` and reads it back with ``params, constants = load(out)``, as a
doctest.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from dpjax.accounting import PrivacyLedger
from dpjax.training.loop import Trainer

__all__ = ["export", "load", "read_config"]

log = logging.getLogger(__name__)

PARAMS_FILE = "params.safetensors"
INFO_FILE = "export.json"
_CONSTANT = "constants/"


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with: ``config.json`` in ``workdir`` (written when the
    run starts), else the ``config`` of its ``results.json``. A redacted user-supplied
    ``privacy.noise_seed`` becomes ``None``: the run's secret is read from its checkpoint.

    Raises:
      FileNotFoundError: neither file is there.
    """
    for name, key in (("config.json", None), ("results.json", "config")):
        path = os.path.join(workdir, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            config = data if key is None else data[key]
            privacy = config.get("privacy") or {}
            if isinstance(privacy.get("noise_seed"), str):  # redacted: the checkpoint has it
                privacy["noise_seed"] = None
            return ml_collections.ConfigDict(config)
    raise FileNotFoundError(f"no config.json or results.json in {workdir}: not a dpjax run")


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(dict(tree), sep="/")
    return {prefix + k: np.asarray(jax.device_get(v)) for k, v in flat.items()}


def export(workdir: str, out: str, *, step: int | None = None, hf: bool = False) -> dict[str, Any]:
    """Writes the trained model of the run in ``workdir`` to the folder ``out``.

    Args:
      workdir: the run directory (``--workdir`` of ``experiments.train``).
      out: folder to write (created; existing files there are overwritten).
      step: checkpoint step to export (default: the latest).
      hf: also write the Hugging Face format to ``out/hf``.

    Returns:
      The content of ``export.json``.

    Raises:
      FileNotFoundError: ``workdir`` is not a run directory.
      dpjax.training.checkpoint.CheckpointError: it has no (usable) checkpoint.
      ValueError: ``hf=True`` and the task's model has no Hugging Face form.
    """
    config = read_config(workdir)
    trainer = Trainer(config, workdir)
    state, meta = trainer.restore(step)
    task = trainer.task
    params = jax.device_get(state.params)
    merged = task.merge is not None
    if merged:
        params = jax.device_get(task.merge(params))
    os.makedirs(out, exist_ok=True)
    tensors = _flat(params)
    tensors.update({_CONSTANT + k: np.asarray(v) for k, v in task.constants.items()})
    save_file(tensors, os.path.join(out, PARAMS_FILE), {"format": "dpjax"})
    ledger = PrivacyLedger.from_dict(meta["ledger"])
    plan = trainer.plan
    info = {
        "method": trainer.settings.method,
        "task": task.name,
        "step": int(meta["step"]),
        "epsilon": plan.epsilon(ledger) if plan.private else None,
        "delta": plan.delta if plan.private else None,
        "adapters_merged": merged,
        "parameters": int(sum(v.size for k, v in tensors.items() if not k.startswith(_CONSTANT))),
        "constants": sorted(task.constants),
        "hf": None,
    }
    if hf:
        info["hf"] = _export_hf(task, params, os.path.join(out, "hf"))
    with open(os.path.join(out, INFO_FILE), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    log.info("exported step %d of %s to %s", info["step"], workdir, out)
    return info


def _export_hf(task: Any, params: Any, directory: str) -> str:
    from dpjax.models import convert

    if task.model is None or task.constants:
        why = "it has no model" if task.model is None else f"it uses {sorted(task.constants)}"
        raise ValueError(f"task {task.name!r} has no Hugging Face form ({why}); use {PARAMS_FILE}")
    try:
        convert.save_pretrained(directory, task.model, params)
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(
            f"task {task.name!r}: its model {type(task.model).__name__} has no Hugging Face "
            f"form ({e}); use {PARAMS_FILE}"
        ) from e
    return directory


def load(out: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(params, constants)`` written by :func:`export` to the folder ``out``."""
    tensors = load_file(os.path.join(out, PARAMS_FILE))
    constants = {k[len(_CONSTANT) :]: v for k, v in tensors.items() if k.startswith(_CONSTANT)}
    flat = {k: v for k, v in tensors.items() if not k.startswith(_CONSTANT)}
    return traverse_util.unflatten_dict(flat, sep="/"), constants
