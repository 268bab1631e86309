"""The one launcher: ``python -m experiments.train --config=<file>[:variant] --workdir=<dir>``.

Any config value can be overridden on the command line, e.g.::

    python -m experiments.train --config=experiments/configs/toy.py:two_phase \\
        --workdir=runs/toy --config.optimizer.lr=1e-2 --config.privacy.target_epsilon=3

The config is validated before anything is compiled. Multi-host runs pass
``--coordinator_address=host:port --num_processes=N --process_id=i`` (or set
``config.distributed``); every process runs the same command and loads only its slice.
"""

from __future__ import annotations

import json
import logging

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (metrics, checkpoints, results).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multi-host); overrides the config."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.mark_flags_as_required(["config", "workdir"])


def _distributed(config) -> tuple[str | None, int, int]:
    from dpjax.config_reader import cfg_get

    dist = cfg_get(config, "distributed")
    address = _COORDINATOR.value or cfg_get(dist, "coordinator_address")
    count = _NUM_PROCESSES.value or cfg_get(dist, "num_processes", 1)
    index = _PROCESS_ID.value if _PROCESS_ID.value is not None else cfg_get(dist, "process_id", 0)
    if count > 1 and not address:
        raise app.UsageError(f"num_processes={count} needs --coordinator_address")
    if not 0 <= index < count:
        raise app.UsageError(f"process_id={index} must be in [0, {count})")
    return address, count, index


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dpjax.training.settings import ConfigError, TrainSettings

    config = _CONFIG.value
    try:
        TrainSettings.from_config(config)  # pure Python: before any JAX work
    except ConfigError as e:
        raise app.UsageError(f"invalid config: {e}") from e
    address, count, index = _distributed(config)
    import jax

    if count > 1:
        jax.distributed.initialize(address, num_processes=count, process_id=index)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax is chatty at INFO
    from dpjax import training

    try:
        results = training.train(config, _WORKDIR.value, progress=_PROGRESS.value)
    except ConfigError as e:
        raise app.UsageError(f"invalid config: {e}") from e
    if jax.process_index() == 0:
        summary = {k: results[k] for k in ("epsilon", "delta", "noise_multiplier", "steps")}
        print(json.dumps({**summary, "eval": results["eval"]}, indent=2))


if __name__ == "__main__":
    app.run(main)
