from dataclasses import dataclass, field

import pytest

from vqgen.config import apply_overrides, config_hash, from_dict, load_yaml, resolve_config, to_dict
from vqgen.errors import ConfigError
from vqgen.train.tokenizer import TOKENIZER_PRESETS, TokenizerTrainConfig


@dataclass
class Inner:
    a: int = 1
    b: tuple[int, ...] = (1, 2)
    c: float | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    name: str = "x"


def test_from_dict_builds_nested_and_casts_lists_to_tuples():
    cfg = from_dict(Outer, {"inner": {"a": 3, "b": [4, 5], "c": 2}, "name": "y"})
    assert cfg == Outer(Inner(3, (4, 5), 2.0), "y")


@pytest.mark.parametrize("data, msg", [
    ({"inner": {"zzz": 1}}, "unknown key"),
    ({"inner": {"a": "3"}}, "expected an integer"),
    ({"inner": {"a": True}}, "expected an integer"),
    ({"name": 3}, "expected a string"),
    ({"inner": 5}, "expected a mapping"),
])
def test_from_dict_rejects_bad_data(data, msg):
    with pytest.raises(ConfigError, match=msg):
        from_dict(Outer, data)


def test_overrides_parse_yaml_values_and_reject_unknown_keys():
    cfg = apply_overrides(Outer(), ["inner.a=7", "inner.b=[1, 2, 3]", "inner.c=null", "name=z"])
    assert cfg == Outer(Inner(7, (1, 2, 3), None), "z")
    with pytest.raises(ConfigError, match="unknown key"):
        apply_overrides(Outer(), ["inner.nope=1"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(Outer(), ["inner.a"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides(Outer(), ["name.x=1"])


def test_yaml_roundtrip_and_preset_resolution(tmp_path):
    cfg = TOKENIZER_PRESETS["tiny"]()
    path = tmp_path / "c.yaml"
    import yaml
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    assert load_yaml(TokenizerTrainConfig, path) == cfg
    assert resolve_config(TokenizerTrainConfig, str(path), TOKENIZER_PRESETS) == cfg
    over = resolve_config(TokenizerTrainConfig, "tiny", TOKENIZER_PRESETS, ["optim.lr=0.5"])
    assert over.optim.lr == 0.5 and config_hash(over) != config_hash(cfg)
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config(TokenizerTrainConfig, "nope", TOKENIZER_PRESETS)


def test_validation_errors_become_config_errors():
    with pytest.raises(ConfigError, match="ema_decay"):
        resolve_config(TokenizerTrainConfig, "tiny", TOKENIZER_PRESETS, ["model.quantizer.ema_decay=1.5"])
    with pytest.raises(ConfigError, match="lpips"):
        resolve_config(TokenizerTrainConfig, "tiny", TOKENIZER_PRESETS, ["loss.perceptual_weight=1.0"])


@pytest.mark.parametrize("name", sorted(TOKENIZER_PRESETS))
def test_every_preset_builds_a_valid_config(name):
    cfg = TOKENIZER_PRESETS[name]()
    assert from_dict(TokenizerTrainConfig, to_dict(cfg)) == cfg


def test_exponent_without_dot_is_a_number_for_float_fields_only():
    cfg = apply_overrides(Outer(), ["inner.c=1e-3"])
    assert cfg.inner.c == 0.001
    with pytest.raises(ConfigError):
        apply_overrides(Outer(), ["inner.c=fast"])
