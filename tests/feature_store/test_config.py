"""feature_store.config: the config's checks name the key, ISO times need a zone, and the on-disk layout."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from core.config import ConfigError, load_config
from feature_store.config import FeatureStoreConfig, Layout, parse_time
from tests.conftest import ROOT


def test_the_shipped_configs_load():
    for name in ("tiny", "demo"):
        cfg = load_config(FeatureStoreConfig, ROOT / "experiments" / "configs" / "features" / f"{name}.yaml")
        assert cfg.name == name


@pytest.mark.parametrize("override, match", [
    ("history_days=0", "'history_days' must be >= 1, got 0"),
    ("chunk_rows=0", "'chunk_rows' must be >= 1, got 0"),
    ("splits={later: ['2026-01-01T00:00:00Z', '2026-01-02T00:00:00Z']}", r"'splits\.later': unknown split"),
    ("splits={train: ['2026-01-02T00:00:00Z', '2026-01-01T00:00:00Z']}", r"'splits\.train': start must be before"),
    ("splits={valid: ['2026-01-01', '2026-01-02T00:00:00Z']}", r"'splits\.valid': '2026-01-01' has no time zone"),
    ("materialize_end=soon", r"'materialize_end': not an ISO time: 'soon'"),
])
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(FeatureStoreConfig, None, [override])


def test_parse_time_converts_any_zone_to_utc():
    assert parse_time("2026-01-05T01:30:00+01:00", "k") == datetime(2026, 1, 5, 0, 30, tzinfo=timezone.utc)
    assert parse_time("2026-01-05T00:00:00Z", "k").tzinfo == timezone.utc
    with pytest.raises(ConfigError, match="'k': not an ISO time: 5"):
        parse_time(5, "k")


def test_layout_paths_are_absolute_under_the_data_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    layout = Layout("data/demo")
    data = tmp_path / "data" / "demo"
    assert layout.data == data and layout.data.is_absolute()
    assert (layout.repo, layout.registry, layout.online, layout.offline) == (
        data / "features" / "repo", data / "features" / "registry.db", data / "features" / "online.db",
        data / "features" / "offline")
    assert layout.raw("impressions") == data / "raw" / "impressions"
    assert layout.embeddings("v1") == data / "embeddings" / "v1"
    assert layout.training_sets("v1") == data / "training_sets" / "v1"
    assert layout.world() is None
    data.mkdir(parents=True)
    (data / "world.json").write_text(json.dumps({"splits": {}}))
    assert layout.world() == {"splits": {}}
