"""Export a finished (or checkpointed) run for inference.

``python -m experiments.export --workdir=<run> [--out=<dir>] [--step=N] [--hf]`` writes
``<dir>/params.safetensors`` (LoRA adapters merged into the base weights, released
constants beside), ``<dir>/export.json`` (method, step, epsilon, delta) and, with
``--hf``, a Hugging Face checkpoint in ``<dir>/hf``. See :mod:`dpjax.training.export`.
"""

from __future__ import annotations

import json
import logging
import os

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of experiments.train.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default: <workdir>/export).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_HF = flags.DEFINE_bool("hf", False, "Also write a Hugging Face checkpoint to <out>/hf.")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("absl").setLevel(logging.WARNING)
    from dpjax.training.checkpoint import CheckpointError
    from dpjax.training.export import export

    out = _OUT.value or os.path.join(_WORKDIR.value, "export")
    try:
        info = export(_WORKDIR.value, out, step=_STEP.value, hf=_HF.value)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        raise app.UsageError(str(e)) from e
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    app.run(main)
