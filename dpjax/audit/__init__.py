"""Empirical privacy audits: check the mechanism that actually runs, not the one on paper.

* :func:`sensitivity_replay` / :func:`replay_trainer` (deterministic): the real step on
  neighbouring batches; the noise-free clipped sums must differ by at most the
  sensitivity, the noise must not depend on the data, have the claimed scale and be
  fresh every step.
* :func:`single_step_audit` (statistical): a canary in or out of one step, ``N`` steps
  of the real noise; a lower bound on epsilon at confidence ``1 - alpha`` (Gaussian DP
  with Clopper-Pearson bounds) compared with the analytic epsilon of one step.
* :func:`one_run_audit` (statistical, Steinke, Nasr & Jagielski 2023): ``m`` canaries,
  each in the training set with probability 1/2, one training run with the real trainer;
  a lower bound on epsilon from how well their scores reveal membership.
* :mod:`dpjax.audit.planted` plants known bugs (no clipping, noise scaled down, a reused
  key, a bfloat16 sum, a loss that mixes examples) so that you can see each audit fail.
* :mod:`dpjax.audit.bounds`: the statistics.

Command line: ``python -m dpjax.audit {replay,single-step,one-run} --config=...``.
"""

from dpjax.audit.one_run import canary_task, one_run_audit
from dpjax.audit.replay import (
    ReplayReport,
    SensitivityError,
    derived_canaries,
    replay,
    sensitivity_replay,
)
from dpjax.audit.single_step import AuditResult, single_step_audit
from dpjax.audit.trainer import replay_trainer, single_step_trainer

__all__ = [
    "AuditResult",
    "ReplayReport",
    "SensitivityError",
    "canary_task",
    "derived_canaries",
    "one_run_audit",
    "replay",
    "replay_trainer",
    "sensitivity_replay",
    "single_step_audit",
    "single_step_trainer",
]
