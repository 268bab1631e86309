"""The config schema is derived from the settings; delta and l2_clip parse from the CLI."""

import dataclasses

import pytest
from absl import flags
from ml_collections import config_flags

from dpjax.training.schema import default_config
from dpjax.training.settings import SECTIONS, ConfigError, PrivacySettings, TrainSettings

TOY = "experiments/configs/toy.py"


def _parse(*overrides, variant="dp_full"):
    """The config as ``experiments/train.py``'s flag parses it, with ``overrides``."""
    argv = ["train", f"--config={TOY}:{variant}", *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


def test_schema_has_every_settings_field_at_its_default():
    c = default_config()
    for f in dataclasses.fields(TrainSettings):
        assert f.name in c
    for key, kind in SECTIONS.items():
        assert sorted(c[key].keys()) == sorted(f.name for f in dataclasses.fields(kind))
        assert kind(**c[key].to_dict()) == kind()
    c.method, c.batch_size, c.physical_batch_size = "nonprivate_full", 8, 8
    assert TrainSettings.from_config(c) == TrainSettings("nonprivate_full", 8, 8)


@pytest.mark.parametrize(
    "override,expected", [("1e-5", 1e-5), ("'1/(2n)'", "1/(2n)"), ("n^-1.1", "n^-1.1")]
)
def test_delta_takes_a_number_or_a_rule_from_the_command_line(override, expected):
    config = _parse(f"--config.privacy.delta={override}")
    assert config.privacy.delta == expected
    assert TrainSettings.from_config(config).privacy.delta == expected


def test_delta_override_on_a_nonprivate_variant():
    config = _parse("--config.privacy.delta=8e-6", variant="nonprivate_full")
    assert TrainSettings.from_config(config).privacy.delta == 8e-6


def test_l2_clip_takes_a_number_or_a_group_mapping_from_the_command_line():
    assert TrainSettings.from_config(_parse("--config.privacy.l2_clip=0.5")).privacy.l2_clip == 0.5
    config = _parse("--config.privacy.l2_clip={'head': 1.0, 'dense1': 0.25}")
    privacy = TrainSettings.from_config(config).privacy
    assert privacy.l2_clip == (("dense1", 0.25), ("head", 1.0))
    assert privacy.clip_groups == {"dense1": 0.25, "head": 1.0}
    hash(privacy)  # settings stay hashable


def test_l2_clip_float_has_no_groups():
    assert PrivacySettings(l2_clip=1).l2_clip == 1.0 and PrivacySettings().clip_groups is None
    assert dataclasses.replace(PrivacySettings(l2_clip={"a": 2.0})).clip_groups == {"a": 2.0}


@pytest.mark.parametrize(
    "value,message",
    [
        ({}, "empty mapping"),
        ({"a": 0.0}, "l2_clip.a must be > 0"),
        ({"a": float("nan")}, "l2_clip.a must be a real number"),
        ({"a": True}, "l2_clip.a must be a real number"),
        ({"": 1.0}, "non-empty strings"),
        ("0.1", "must be a real number"),
        (float("inf"), "must be finite"),
    ],
)
def test_bad_l2_clip(value, message):
    with pytest.raises(ConfigError, match=message):
        PrivacySettings(l2_clip=value)


def test_unknown_distributed_key_is_rejected():
    c = default_config()
    c.method, c.batch_size, c.physical_batch_size = "nonprivate_full", 8, 8
    c.distributed.port = 1
    with pytest.raises(ConfigError, match=r"unknown key\(s\) in config.distributed"):
        TrainSettings.from_config(c)
