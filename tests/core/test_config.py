"""core.config: defaults, YAML and key=value overrides, and errors that name the key."""

import argparse
import dataclasses
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from core.config import ConfigError, add_config_args, config_from_args, config_to_dict, dump_config, load_config


@dataclass(frozen=True)
class ModelConfig:
    lr: float = 0.01
    depth: int = 2
    kind: Literal["dcn", "mlp"] = "dcn"
    dropout: Optional[float] = 0.1
    heads: Literal[1, 2, 4] = 1

    def validate(self) -> None:
        if self.depth < 1:
            raise ConfigError(f"ModelConfig: 'depth' must be at least 1, got {self.depth}")


@dataclass(frozen=True)
class TrainConfig:
    name: str = "run"
    seed: int = 7
    shuffle: bool = True
    slot_mix: tuple[float, ...] = (0.5, 0.5)
    tags: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    note: str | None = None
    out_dir: Path = Path("runs")
    model: ModelConfig = ModelConfig()
    head: Optional[ModelConfig] = None
    tower: ModelConfig = field(default_factory=lambda: ModelConfig(kind="mlp"))

    def validate(self) -> None:
        if abs(sum(self.slot_mix) - 1) > 1e-6:
            raise ConfigError(f"TrainConfig: 'slot_mix' must sum to 1, got {self.slot_mix}")


@dataclass(frozen=True)
class RequiredFieldConfig:
    data_dir: str
    epochs: int = 1


@dataclass(frozen=True)
class JobConfig:
    req: RequiredFieldConfig  # no default: its own required field must be set


@dataclass(frozen=True)
class PipelineConfig:
    job: JobConfig
    name: str = "p"


def _write_yaml(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_only():
    cfg = load_config(TrainConfig)
    assert cfg == TrainConfig()
    assert cfg.model == ModelConfig() and cfg.head is None


def test_yaml_overrides_nested_and_top_level(tmp_path):
    path = _write_yaml(tmp_path, "name: a\nslot_mix: [0.2, 0.8]\ntags: [x, y]\nweights: {a: 1}\nmodel:\n  depth: 5\n")
    cfg = load_config(TrainConfig, path)
    assert cfg.name == "a" and cfg.slot_mix == (0.2, 0.8)
    assert cfg.tags == ("x", "y")  # lists are stored as tuples in the frozen config
    assert cfg.weights == {"a": 1.0} and isinstance(cfg.weights["a"], float)
    assert cfg.model == ModelConfig(depth=5)  # the other nested fields keep their defaults
    assert cfg.seed == 7


def test_cli_overrides_beat_yaml(tmp_path):
    path = _write_yaml(tmp_path, "seed: 1\nmodel: {lr: 0.5, depth: 3}\n")
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    args = parser.parse_args(["--config", str(path), "seed=2", "model.lr=1e-3", "name=foo", "tags=[a,b]"])
    cfg = config_from_args(TrainConfig, args)
    assert cfg.seed == 2 and cfg.name == "foo" and cfg.tags == ("a", "b")
    assert cfg.model.lr == 0.001 and cfg.model.depth == 3  # YAML's depth survives an override of lr
    assert load_config(TrainConfig, path, ["model={depth: 4}"]).model == ModelConfig(lr=0.5, depth=4)


def test_nested_optional_dataclass_from_override():
    assert load_config(TrainConfig, None, ["head.depth=9"]).head == ModelConfig(depth=9)
    assert load_config(TrainConfig, None, ["head.depth=9", "head=null"]).head is None


def test_unknown_top_level_key_suggests_close_match(tmp_path):
    path = _write_yaml(tmp_path, "seeed: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, path)
    assert str(path) in str(e.value) and "unknown key 'seeed' for TrainConfig" in str(e.value)
    assert "did you mean 'seed'?" in str(e.value)


def test_unknown_nested_key_names_dotted_key(tmp_path):
    with pytest.raises(ConfigError,
                       match=r"unknown key 'model\.deph' for ModelConfig \(did you mean 'model\.depth'\?\)"):
        load_config(TrainConfig, _write_yaml(tmp_path, "model:\n  deph: 3\n"))
    with pytest.raises(ConfigError, match=r"override 'model\.deph=3': unknown key 'model\.deph'"):
        load_config(TrainConfig, None, ["model.deph=3"])
    with pytest.raises(ConfigError, match=r"'seed' is not a nested config"):
        load_config(TrainConfig, None, ["seed.x=3"])


@pytest.mark.parametrize("override, key, expected", [
    ("seed=abc", "seed", "int"),
    ("model.lr=abc", "model.lr", "float"),
    ("model.dropout=abc", "model.dropout", "float"),
    ("shuffle=1", "shuffle", "bool (true/false)"),
    ("shuffle=yess", "shuffle", "bool (true/false)"),
    ("name=123", "name", "str"),
    ("slot_mix=[0.5, x]", "slot_mix[1]", "float"),
    ("slot_mix=0.5", "slot_mix", "a list"),
    ("weights={a: x}", "weights.a", "float"),
    ("model.kind=gbdt", "model.kind", "one of 'dcn', 'mlp'"),
    ("model.heads=true", "model.heads", "one of 1, 2, 4"),
    ("model=3", "model", "a mapping of ModelConfig fields"),
])
def test_wrong_type_names_the_key(override, key, expected):
    with pytest.raises(ConfigError, match=re.escape(f"override '{override}': key '{key}': expected {expected}, got")):
        load_config(TrainConfig, None, [override])


def test_wrong_type_in_yaml_names_file_and_key(tmp_path):
    path = _write_yaml(tmp_path, "model:\n  lr: abc\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, path)
    assert str(e.value) == f"{path}: key 'model.lr': expected float, got 'abc'"


def test_int_accepted_for_float_and_bool_rejected_for_int():
    cfg = load_config(TrainConfig, None, ["model.lr=1"])
    assert cfg.model.lr == 1.0 and type(cfg.model.lr) is float
    with pytest.raises(ConfigError, match="key 'seed': expected int, got True"):
        load_config(TrainConfig, None, ["seed=true"])
    with pytest.raises(ConfigError, match="key 'model.lr': expected float, got False"):
        load_config(TrainConfig, None, ["model.lr=false"])


def test_yaml_reads_exponent_floats_and_keeps_dates_as_strings(tmp_path):
    path = _write_yaml(tmp_path, "note: 2026-01-05\nmodel: {lr: 1e-3}\nslot_mix: [5.0e-1, 5e-1]\n")
    cfg = load_config(TrainConfig, path)
    assert cfg.note == "2026-01-05" and cfg.model.lr == 0.001 and cfg.slot_mix == (0.5, 0.5)


def test_null_for_optional_only():
    cfg = load_config(TrainConfig, None, ["model.dropout=null", "note=~"])
    assert cfg.model.dropout is None and cfg.note is None
    assert load_config(TrainConfig, None, ["note=hi"]).note == "hi"
    with pytest.raises(ConfigError, match="key 'seed': expected int, got None"):
        load_config(TrainConfig, None, ["seed=null"])


def test_override_of_nested_field_keeps_the_fields_default_instance():
    assert TrainConfig().tower.kind == "mlp"
    assert load_config(TrainConfig, None, ["tower.lr=0.5"]).tower == ModelConfig(kind="mlp", lr=0.5)


def test_validate_hook_runs_after_overrides():
    with pytest.raises(ConfigError, match="'slot_mix' must sum to 1"):
        load_config(TrainConfig, None, ["slot_mix=[0.5, 0.6]"])
    assert load_config(TrainConfig, None, ["slot_mix=[0.4, 0.6]"]).slot_mix == (0.4, 0.6)
    with pytest.raises(ConfigError, match="'depth' must be at least 1"):  # nested configs validate too
        load_config(TrainConfig, None, ["model.depth=0"])


def test_missing_required_field(tmp_path):
    with pytest.raises(ConfigError, match="missing required key.*'data_dir'"):
        load_config(RequiredFieldConfig)
    with pytest.raises(ConfigError, match="missing required key.*'data_dir'"):
        load_config(RequiredFieldConfig, _write_yaml(tmp_path, "epochs: 3\n"))
    assert load_config(RequiredFieldConfig, None, ["data_dir=/d"]) == RequiredFieldConfig(data_dir="/d")
    with pytest.raises(ConfigError, match="missing required key.*'job.req.data_dir'"):
        load_config(PipelineConfig)
    with pytest.raises(ConfigError, match="missing required key.*'job.req.data_dir'"):
        load_config(PipelineConfig, None, ["job.req.epochs=2"])
    assert load_config(PipelineConfig, None, ["job.req.data_dir=/d"]).job == JobConfig(RequiredFieldConfig("/d"))


def test_non_mapping_yaml_and_missing_file(tmp_path):
    path = _write_yaml(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping") as e:
        load_config(TrainConfig, path)
    assert str(path) in str(e.value)
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as e:
        load_config(TrainConfig, missing)
    assert str(missing) in str(e.value)
    assert load_config(TrainConfig, _write_yaml(tmp_path, "# only comments\n", "empty.yaml")) == TrainConfig()


def test_malformed_override():
    with pytest.raises(ConfigError, match="override 'seed': expected dotted.key=value"):
        load_config(TrainConfig, None, ["seed"])
    with pytest.raises(ConfigError, match=r"override 'tags=\[a': invalid YAML"):
        load_config(TrainConfig, None, ["tags=[a"])


def test_round_trip_through_dump_config(tmp_path):
    cfg = load_config(TrainConfig, None, [
        "name='1e-3'", "note='2026-01-05'", "tags=[a, 'yes']", "weights={a: 2, b: 1.0e-20}",
        "slot_mix=[0.25, 0.75]", "model.kind=mlp", "model.dropout=null", "head={lr: 3}",
        "out_dir=/tmp/x",
    ])
    assert cfg.out_dir == Path("/tmp/x")
    assert cfg.name == "1e-3" and cfg.note == "2026-01-05" and cfg.tags == ("a", "yes")
    path = tmp_path / "out" / "cfg.yaml"
    dump_config(cfg, path)
    assert load_config(TrainConfig, path) == cfg
    plain = config_to_dict(cfg)
    assert plain["slot_mix"] == [0.25, 0.75] and plain["model"]["kind"] == "mlp" and plain["head"]["lr"] == 3.0
    assert plain["out_dir"] == "/tmp/x"
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain  # plain, YAML-safe data


def test_config_is_frozen():
    cfg = load_config(TrainConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.lr = 3.0  # type: ignore[misc]


FUTURE_MODULE = '''
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Inner:
    size: int = 1


@dataclass(frozen=True)
class Outer:
    ratio: float = 0.5
    dims: tuple[int, ...] = (1, 2)
    mode: Literal["a", "b"] = "a"
    limit: int | None = None
    inner: Inner = Inner()
'''


def test_string_annotations_from_future_import(tmp_path, monkeypatch):
    (tmp_path / "future_cfg.py").write_text(FUTURE_MODULE)
    spec = importlib.util.spec_from_file_location("future_cfg", tmp_path / "future_cfg.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "future_cfg", module)
    spec.loader.exec_module(module)
    assert isinstance(dataclasses.fields(module.Outer)[0].type, str)  # the annotations really are strings

    cfg = load_config(module.Outer, None, ["ratio=2", "dims=[3, 4]", "mode=b", "limit=5", "inner.size=9"])
    assert cfg == module.Outer(ratio=2.0, dims=(3, 4), mode="b", limit=5, inner=module.Inner(size=9))
    with pytest.raises(ConfigError, match=r"key 'dims\[0\]': expected int"):
        load_config(module.Outer, None, ["dims=[x]"])
    with pytest.raises(ConfigError, match="key 'inner.size': expected int"):
        load_config(module.Outer, None, ["inner.size=1.5"])


def test_exit_on_turns_the_named_errors_into_one_line_and_status_2(capsys):
    from core.config import exit_on

    def bad() -> int:
        raise ConfigError("ranking.yaml: unknown key 'epochz'")

    with pytest.raises(SystemExit) as stop:
        exit_on(bad, ConfigError)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: ranking.yaml: unknown key 'epochz'\n"
    with pytest.raises(SystemExit) as stop:
        exit_on(lambda: 0, ConfigError)
    assert stop.value.code == 0
    with pytest.raises(KeyError):  # not named: a bug, with its traceback
        exit_on(lambda: {}["x"], ConfigError)
