"""Metric sinks: a JSONL log in the workdir and TensorBoard event files.

Only process 0 writes. TensorBoard needs the optional ``tensorboardX`` package; it is
imported lazily and, when missing, the writer logs one warning and keeps the JSONL log.

Example:
    >>> import tempfile
    >>> with MetricWriter(tempfile.mkdtemp(), tensorboard=False) as w:
    ...     w.write(1, {"train/loss": 0.5})
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

__all__ = ["MetricWriter", "read_jsonl"]

log = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    value = float(value)
    return value if math.isfinite(value) else str(value)


class MetricWriter:
    """Writes ``{step, **metrics}`` records to ``<workdir>/metrics.jsonl`` and TensorBoard.

    Args:
      workdir: run directory (created if needed).
      enabled: write anything at all (``False`` on processes other than 0).
      tensorboard: also write event files under ``<workdir>/tensorboard``.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                log.warning(
                    "tensorboardX is not installed: no TensorBoard event files, metrics go to "
                    "%s only (pip install tensorboardX==2.6.5)",
                    self.path,
                )
            else:
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends one record; non-finite values are stored as strings (``"inf"``)."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if math.isfinite(float(v)):
                    self._tb.add_scalar(k, float(v), int(step))
            self._tb.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Reads a metrics file back (one dict per line)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
