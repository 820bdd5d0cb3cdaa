"""`python -m feature_store` (feature_store/__main__.py): the three commands end to end on the tiny world, and
argument and config errors before any work starts."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from core.config import ConfigError
from feature_store.__main__ import main
from feature_store.features import TRAINING_COLUMNS
from feature_store.schema import COUNT_WINDOWS_DAYS, read_table
from tests.feature_store.store_world import CONFIG, DIM, VERSION, run


def test_main_writes_training_sets_with_the_contract(built, ts_frame):
    folder = built / "training_sets" / VERSION
    meta = json.loads((folder / "metadata.json").read_text())
    world = json.loads((built / "world.json").read_text())
    assert meta["embedding_version"] == VERSION and meta["embedding_dim"] == DIM
    assert meta["embedding_model"] == {"name": "random-standin", "seed": 0}
    assert [c["name"] for c in meta["columns"]] == list(TRAINING_COLUMNS)
    assert meta["splits"] == world["splits"]
    assert meta["defaults"]["history_count"] == 0.0 and meta["count_windows_days"] == list(COUNT_WINDOWS_DAYS)
    imp = pd.read_parquet(built / "raw" / "impressions", columns=["impression_id", "ts"])
    for split, (start, end) in world["splits"].items():
        n = int(((imp.ts >= pd.Timestamp(start)) & (imp.ts < pd.Timestamp(end))).sum())
        assert meta["rows"][split] == n > 0
        part = read_table("training_set", folder / split, embedding_dim=DIM)  # validates the contract
        assert part.column_names == list(TRAINING_COLUMNS) and part.num_rows == n
    assert len(ts_frame) == len(imp) and meta["rows_outside_splits"] == 0
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left
    repo = built / "features" / "repo"
    assert sorted(p.name for p in repo.iterdir()) == ["definitions.py", "feature_store.yaml", "params.json"]
    assert str((built / "features").resolve()) in (repo / "feature_store.yaml").read_text()  # absolute paths
    assert (built / "features" / "registry.db").exists()


def test_config_errors_name_the_key(built):
    with pytest.raises(ConfigError, match=r"'splits.train'.*no time zone"):
        run("training-set", built, "splits={train: ['2026-01-05T00:00:00', '2026-01-06T00:00:00']}")
    with pytest.raises(ConfigError, match="history_dayz"):
        run("build", built, "history_dayz=3")
    with pytest.raises(ConfigError, match="'history_days' must be >= 1"):
        run("build", built, "history_days=0")


def test_bad_arguments_stop_before_any_work(tmp_path, capsys):
    for argv in (["build"], ["rebuild", "--data", str(tmp_path), "--embeddings", VERSION]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    assert "--data" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=r"embedding version 'nope'.*versions found: none"):
        main(["build", "--data", str(tmp_path), "--embeddings", "nope", "--config", CONFIG, "progress=false"])
    assert not (tmp_path / "features").exists()
