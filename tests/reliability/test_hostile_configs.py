"""Hostile config files and overrides against core.config.load_config and the configs that name folders: unknown
keys, wrong types, YAML that is not a mapping, a non-UTF-8 file, huge numbers, negative sizes, folder names that
climb out of data/. Each is a ConfigError naming the dotted key (or the file) and what was expected."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import ConfigError, check_folder_name, load_config
from experiments.world import WorldConfig
from ranking.prepare import PrepareConfig

HOSTILE = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Inner:
    size: int = 4
    rate: float = 0.5


@dataclass(frozen=True)
class Outer:
    name: str = "demo"
    seed: int = 0
    flag: bool = False
    mix: tuple[float, ...] = (0.5, 0.5)
    inner: Inner = field(default_factory=Inner)


YAML_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                         st.sampled_from([10**30, -(10**30), 1e400, float("nan"), 2**63, -(2**63) - 1, 2**63 - 1]))
YAML_VALUES = st.recursive(YAML_SCALARS, lambda c: st.one_of(st.lists(c, max_size=3),
                                                             st.dictionaries(st.text(max_size=6), c, max_size=3)),
                           max_leaves=6)
KEYS = st.sampled_from(["name", "seed", "flag", "mix", "inner", "inner.size", "inner.rate", "inner.nope", "nope",
                        "seed.x", "mix.0"])


def _check(cfg: Outer) -> None:
    """What loaded has the declared types and finite, 64-bit numbers."""
    assert isinstance(cfg.name, str) and type(cfg.seed) is int and -(2**63) <= cfg.seed < 2**63
    assert type(cfg.flag) is bool and all(type(x) is float and abs(x) < float("inf") for x in cfg.mix)
    assert type(cfg.inner.size) is int and -(2**63) <= cfg.inner.size < 2**63
    assert type(cfg.inner.rate) is float and abs(cfg.inner.rate) < float("inf")


@HOSTILE
@given(st.dictionaries(KEYS, YAML_VALUES, max_size=3))
def test_any_yaml_mapping_loads_with_the_declared_types_or_names_the_key(tmp_path_factory, mapping):
    path = tmp_path_factory.mktemp("c") / "c.yaml"
    path.write_text(yaml.safe_dump(mapping, allow_unicode=True))
    try:
        cfg = load_config(Outer, path)
    except ConfigError as err:
        assert str(err).startswith(f"{path}: ")
        assert "key '" in str(err), str(err)
        return
    _check(cfg)


@HOSTILE
@given(KEYS, st.text(max_size=12))
def test_any_override_loads_or_names_the_override(key, text):
    item = f"{key}={text}"
    try:
        cfg = load_config(Outer, None, [item])
    except ConfigError as err:
        assert str(err).startswith(f"override {item!r}: ")
        return
    _check(cfg)


@HOSTILE
@given(st.binary(max_size=64))
def test_any_bytes_as_a_config_file_load_or_raise_config_error_naming_the_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("c") / "c.yaml"
    path.write_bytes(data)
    try:
        _check(load_config(Outer, path))
    except ConfigError as err:
        assert str(err).startswith(f"{path}: ")


@pytest.mark.parametrize("text, message", [
    ("seed: 1000000000000000000000000000000\n", "key 'seed': expected an int within 64 bits (-2**63 .. 2**63-1), "
                                                "got 1000000000000000000000000000000"),
    ("inner: {rate: 1e400}\n", "key 'inner.rate': expected a finite float, got inf"),
    ("inner: {rate: .nan}\n", "key 'inner.rate': expected a finite float, got nan"),
    ("mix: [0.5, -.inf]\n", "key 'mix[1]': expected a finite float, got -inf"),
    ("inner.size: 2\n", "unknown key 'inner.size' for Outer (did you mean 'inner'?)"),
    ("inner: {sizes: 2}\n", "unknown key 'inner.sizes' for Inner (did you mean 'inner.size'?)"),
    ("seed: '7'\n", "key 'seed': expected int, got '7'"),
    ("flag: 1\n", "key 'flag': expected bool (true/false), got 1"),
    ("- seed\n- 1\n", "top level must be a mapping of keys to values, got list"),
    ("just text\n", "top level must be a mapping of keys to values, got str"),
    ("seed: [1\n", "invalid YAML"),
])
def test_bad_config_files_name_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_a_non_utf8_file_and_a_folder_are_config_errors(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"^{path}: not UTF-8 text \(byte 0xe9 at offset 9\); a config is a "
                                          r"UTF-8 YAML file$"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: cannot read config file: Is a directory$"):
        load_config(Outer, tmp_path)


@pytest.mark.parametrize("override, message", [
    ("n_products=-5", "WorldConfig: invalid value for 'n_products': -5"),
    ("n_users=0", "WorldConfig: invalid value for 'n_users': 0"),
    ("requests_per_day=1e400", "key 'requests_per_day': expected int, got inf"),
    ("n_queries=1000000000000000000000000000000", "key 'n_queries': expected an int within 64 bits"),
    ("name=../../etc", "WorldConfig: 'name' must be a plain folder name (no '/', '\\' or leading '.', not empty), "
                       "got '../../etc'"),
    ("name=..", "WorldConfig: 'name' must be a plain folder name"),
    ("name=''", "WorldConfig: 'name' must be a plain folder name"),
    ("name=/tmp/x", "WorldConfig: 'name' must be a plain folder name"),
])
def test_world_config_refuses_negative_huge_and_escaping_values(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(WorldConfig, None, [override])
    assert message in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (["max_rows=-1"], "max_rows and seed must be >= 0, got max_rows=-1, seed=0"),
    (["seed=-3"], "max_rows and seed must be >= 0, got max_rows=0, seed=-3"),
    (["name=a/../../b"], "PrepareConfig: 'name' must be a plain folder name"),
    (["valid_ratio=.inf"], "key 'valid_ratio': expected a finite float, got inf"),
])
def test_prepare_config_refuses_negative_sizes_and_escaping_names(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(PrepareConfig, None, ["input=x.csv", "out=o", *overrides])
    assert message in str(err.value)


@pytest.mark.parametrize("name", ["demo", "tiny-2", "criteo_1", "a.b"])
def test_plain_folder_names_pass(name):
    check_folder_name("X", "name", name)
