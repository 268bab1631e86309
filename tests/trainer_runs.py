"""Shared by the trainer tests: run logical steps, compare parameter trees."""

import jax
import numpy as np


def run_steps(trainer, steps):
    """The state after ``steps`` logical steps from the trainer's initial state."""
    state = trainer.initial_state()
    for t in range(steps):
        state, _ = trainer.logical_step(state, t)
    return state


def assert_trees_close(a, b, rtol, atol=1e-7):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)
