"""The secret of a private run: from its checkpoint, the user's seed, or OS entropy.

Resolved once, before the task is built (a task builder draws the noise of what it
releases from it) and before the sampler exists (its seed is one of its streams):

1. a checkpoint of this config in ``<workdir>/checkpoints`` holds it: a resumed run
   continues the same noise and sampling streams (a ``privacy.noise_seed`` given then
   must be the one the run started with);
2. else ``privacy.noise_seed``, when given: reproducible and *not secret* (a warning
   says so, and ``results.json`` reports ``"user-supplied (not secret)"``);
3. else 128 bits of OS entropy, drawn by process 0 and broadcast to every process.

Example:
    >>> import tempfile
    >>> run_secrets(tempfile.mkdtemp(), "fingerprint", noise_seed=None).describe()
    'secret (OS entropy)'
"""

from __future__ import annotations

import logging
import os

from dpjax.randomness import RunSecrets
from dpjax.training.checkpoint import Checkpointer, CheckpointError

__all__ = ["run_secrets"]

log = logging.getLogger(__name__)


def run_secrets(checkpoint_dir: str, fingerprint: str, noise_seed: int | None) -> RunSecrets:
    """The run's :class:`~dpjax.randomness.RunSecrets` (see the module docstring)."""
    if os.path.isdir(checkpoint_dir):
        ckpt = Checkpointer(checkpoint_dir, keep=1, fingerprint=fingerprint)
        try:
            found = ckpt.read_secrets()
        finally:
            ckpt.close()
        if found is not None:
            if noise_seed is not None and (found.root, found.user_supplied) != (noise_seed, True):
                raise CheckpointError(
                    f"the checkpoint in {checkpoint_dir} was drawn from another secret than "
                    "privacy.noise_seed (the value is not shown); resume without "
                    "privacy.noise_seed or with the seed the run started with"
                )
            return found
    if noise_seed is not None:
        log.warning(
            "privacy.noise_seed is set: the noise and the batches of this run are "
            "reproducible from the config and NOT secret (results.json says so); leave "
            "it unset for a private release"
        )
        return RunSecrets.from_seed(noise_seed)
    return RunSecrets.draw().broadcast()
