"""Bad config values fail with a clear message naming the key, before any compilation."""

import jax
import pytest

from dpjax.training import ConfigError, Trainer, TrainSettings
from experiments.configs import quickstart, toy


@pytest.fixture(scope="module")
def task():
    return toy.build_task(toy.get_config().task)


@pytest.fixture
def no_compile(monkeypatch):
    """Fails the test if XLA compiles anything while it is active."""
    compiled = []

    def listener(event, duration, **kw):
        if "backend_compile" in event:
            compiled.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield compiled
    jax.monitoring.unregister_event_duration_listener(listener)


def _set(cfg, dotted, value):
    *parents, leaf = dotted.split(".")
    for p in parents:
        cfg = cfg[p]
    with cfg.ignore_type():
        cfg[leaf] = value


BAD = [
    ("optimizer.lr", -1.0, "config.optimizer.lr must be > 0, got -1.0"),
    ("optimizer.name", "lamb", "config.optimizer.name must be one of"),
    ("optimizer.schedule", "cosine", "config.optimizer.schedule must be one of"),
    ("method", "dp_everything", "config.method must be one of"),
    ("engine", "opacus", "config.engine must be one of"),
    ("physical_batch_size", 128, "physical_batch_size=128 is larger than the logical"),
    ("batch_size", 0, "config.batch_size must be an integer >= 1, got 0"),
    ("privacy.delta", None, "config.privacy.delta must be stated for target_epsilon"),
    ("privacy.delta", 2.0, "config.privacy.delta must be in (0, 1), got 2.0"),
    ("privacy.l2_clip", 0.0, "config.privacy.l2_clip must be > 0"),
    ("privacy.noise_multiplier", 1.0, "exactly one of config.privacy.noise_multiplier"),
    ("privacy.clip_fn", "automatic", "needs privacy.gamma > 0"),
    ("sampler", "without_replacement", "only the RDP accountant supports"),
    ("sampler", "fixed", "config.sampler='fixed' was renamed: use 'without_replacement'"),
    ("privacy.delta", "1e-5", "config.privacy.delta must be a number in (0, 1) or one of"),
    ("privacy.l2_clip", {}, "config.privacy.l2_clip is an empty mapping"),
    ("privacy.l2_clip", {"head": -1.0}, "config.privacy.l2_clip.head must be > 0, got -1.0"),
    ("privacy.l2_clip", {"head": float("inf")}, "config.privacy.l2_clip.head must be finite"),
    ("privacy.l2_clip", {1: 0.1}, "config.privacy.l2_clip keys must be non-empty strings"),
    ("steps", -3, "config.steps must be an integer >= 1, got -3"),
    ("optimizer.b2", 1.5, "config.optimizer.b2 must be in [0, 1)"),
    ("privacy.max_epsilon", 1.0, "max_epsilon=1.0 is below target_epsilon=8.0"),
    ("two_phase.full_lr", -5e-4, "config.two_phase.full_lr must be > 0"),
]


@pytest.mark.parametrize("key,value,message", BAD, ids=[b[0] + "=" + repr(b[1]) for b in BAD])
def test_bad_values_give_clear_errors(key, value, message):
    cfg = toy.get_config("dp_full")
    _set(cfg, key, value)
    with pytest.raises(ConfigError) as err:
        TrainSettings.from_config(cfg)
    assert message in str(err.value)


def test_gamma_with_abadi_clipping_is_an_error_unless_unset():
    """A leftover gamma would be silently ignored; 0 (what a command line can give) unsets."""
    cfg = quickstart.get_config("dp_lora")  # automatic clipping, gamma 0.01
    cfg.privacy.clip_fn, cfg.privacy.l2_clip = "abadi", 10.0
    with pytest.raises(ConfigError, match="--config.privacy.gamma=0 on the command line"):
        TrainSettings.from_config(cfg)
    cfg.privacy.gamma = 0.0
    assert TrainSettings.from_config(cfg).privacy.gamma is None


def test_unknown_keys_are_rejected():
    cfg = toy.get_config("dp_full")
    cfg.optimizer.learning_rate = 1e-3
    with pytest.raises(
        ConfigError, match=r"unknown key\(s\) in config.optimizer: \['learning_rate'\]"
    ):
        TrainSettings.from_config(cfg)
    cfg = toy.get_config("dp_full")
    cfg.epoch = 3
    with pytest.raises(ConfigError, match="unknown top-level config key"):
        TrainSettings.from_config(cfg)


def test_two_phase_needs_room_for_the_bitfit_phase():
    cfg = toy.get_config("two_phase")
    cfg.two_phase.full_epochs = 2.0
    with pytest.raises(ConfigError, match="leaves no DP-BiTFiT phase"):
        TrainSettings.from_config(cfg)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("batch_size", 4096, "batch_size=4096 exceeds the 1024 training examples"),
        ("physical_batch_size", 12, "physical_batch_size=12 is not divisible by the mesh"),
        ("mesh.model", 3, "does not match the 8 available devices"),
        ("privacy.target_epsilon", 1e4, "target_epsilon.*loose"),
    ],
)
def test_trainer_checks_run_before_compiling(task, no_compile, key, value, message):
    cfg = toy.get_config("dp_full")
    cfg.physical_batch_size = 32
    if key == "batch_size":
        cfg.physical_batch_size = 32
    _set(cfg, key, value)
    with pytest.raises(ConfigError, match=message):
        Trainer(cfg, "/unused", task=task)
    assert no_compile == []


def test_the_listener_sees_compilation(no_compile):
    jax.jit(lambda x: x * 3 + 1)(jax.numpy.ones(7)).block_until_ready()
    assert no_compile  # the no-compilation check above can fail
