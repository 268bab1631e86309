"""Test setup: 8 simulated CPU devices (for sharding tests) and shared fixtures."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TFDS_DATA_DIR", "/nonexistent-dpjax-tfds")  # never download in tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

# XLA's persistent compilation cache: many tests compile the same tiny models and steps
# (and the slow run repeats the fast run's programs), so executables are shared across
# tests, xdist workers, subprocesses and runs. DPJAX_TEST_JAX_CACHE="" turns it off.
_CACHE = os.environ.setdefault(
    "DPJAX_TEST_JAX_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "jax")
)
if _CACHE:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)  # launcher subprocesses too
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture
def x64():
    """Runs the test body with float64 enabled (the oracle precision)."""
    with jax.enable_x64(True):
        yield
