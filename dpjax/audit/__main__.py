"""``python -m dpjax.audit {replay,single-step,one-run} [--config=FILE[:variant]] [flags]``.

* ``replay --config=...``: the sensitivity replay of the config's trainer (its task,
  engine, clipping, accumulation and privatizer) on logical step ``--step``.
* ``single-step --config=...``: the single-step statistical audit with the config's loss,
  engine and clip norm (``--trials`` 4-update cycles).
* ``one-run``: the one-run canary audit with the real trainer at ``--epsilon``
  (``--m`` canaries, ``--engine``; a config, if given, supplies the engine).

``--plant=NAME`` runs the audit with a planted bug (``no_clipping``, ``noise_tenth``,
``noise_0.8``, ``reused_key``, ``bf16_sum``) to show that it fails. The exit status is 0
when the audit passes and 1 when it fails. Example::

    python -m dpjax.audit replay --config=experiments/configs/toy.py:dp_bitfit
    python -m dpjax.audit one-run --m=1000 --epsilon=2 --plant=noise_tenth
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile

from absl import app, flags
from ml_collections import config_flags

from dpjax.config_reader import cfg_get

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].")
_STEP = flags.DEFINE_integer("step", 0, "replay: the logical step whose batch is replayed.")
_ROWS = flags.DEFINE_integer("rows", 8, "replay: examples masked out, one at a time.")
_TRIALS = flags.DEFINE_integer("trials", 20000, "single-step: 4-update cycles.")
_M = flags.DEFINE_integer("m", 1000, "one-run: number of canaries.")
_EPSILON = flags.DEFINE_float("epsilon", 2.0, "one-run: claimed epsilon.")
_ENGINE = flags.DEFINE_string("engine", "vmap", "one-run: vmap or ghost.")
_ALPHA = flags.DEFINE_float("alpha", 0.05, "statistical audits: significance level.")
_PLANT = flags.DEFINE_string("plant", None, "run with a planted bug (see dpjax.audit.planted).")
_JSON = flags.DEFINE_string("json", None, "also write the result as JSON to this path.")

COMMANDS = ("replay", "single-step", "one-run")


def _trainer(tmp: str):
    from dpjax.training import Trainer

    if _CONFIG.value is None:
        raise app.UsageError("this audit needs --config=FILE[:variant]")
    return Trainer(_CONFIG.value, tmp)


def _run(command: str, tmp: str) -> tuple[bool, str, dict]:
    from dpjax import audit

    if command == "replay":
        report = audit.replay_trainer(_trainer(tmp), _STEP.value, rows=_ROWS.value)
        record = {
            "max_ratio": report.max_ratio,
            "worst": report.worst,
            "noise_std_ratio": report.noise_std_ratio,
            "noise_correlation": report.noise_correlation,
            "failures": list(report.failures),
        }
        return report.ok, report.summary(), record
    if command == "single-step":
        result = audit.single_step_trainer(_trainer(tmp), trials=_TRIALS.value, alpha=_ALPHA.value)
    else:
        engine = _ENGINE.value
        engine = cfg_get(_CONFIG.value, "engine", engine)
        result = audit.one_run_audit(
            m=_M.value, epsilon=_EPSILON.value, engine=engine, alpha=_ALPHA.value, workdir=tmp
        )
    record = {
        "epsilon_lower": result.epsilon_lower,
        "epsilon_claimed": result.epsilon_claimed,
        "delta": result.delta,
        "alpha": result.alpha,
        "details": result.details,
    }
    return result.passed, result.summary(), record


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m dpjax.audit {{{','.join(COMMANDS)}}} [flags]")
    from dpjax.audit import planted

    plant = contextlib.nullcontext()
    if _PLANT.value is not None:
        if _PLANT.value not in planted.PLANTS:
            choices = sorted(planted.PLANTS)
            raise app.UsageError(f"--plant={_PLANT.value!r} is not a planted bug; use {choices}")
        plant = planted.PLANTS[_PLANT.value]()
    with tempfile.TemporaryDirectory() as tmp, plant:
        passed, text, record = _run(argv[1], tmp)
    print(text)
    if _JSON.value:
        with open(_JSON.value, "w", encoding="utf-8") as f:
            json.dump({"command": argv[1], "plant": _PLANT.value, "passed": passed, **record},
                      f, indent=2, default=repr)  # fmt: skip
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    app.run(main)
