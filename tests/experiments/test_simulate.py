"""experiments.simulate on the tiny world: contracts, referential integrity, determinism, atomic writes, the CLI,
and the retrieval of fresh products."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core.config import ConfigError, load_config
from experiments import simulate
from experiments.world import DAY_US, WorldConfig
from feature_store.schema import TABLES, read_table
from tests.conftest import ROOT, WORLD_CONFIGS

TINY = WORLD_CONFIGS / "tiny.yaml"


def _tiny_cfg(**overrides) -> WorldConfig:
    return load_config(WorldConfig, TINY, [f"{k}={v}" for k, v in overrides.items()])


def _file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_table_follows_its_contract(tiny_world):
    for table in simulate.RAW_TABLES:
        assert read_table(table, tiny_world / "raw" / table).num_rows > 0
    for table in simulate.HIDDEN_TABLES:
        assert TABLES[table].hidden
        assert read_table(table, tiny_world / "hidden" / table).num_rows > 0
    meta = json.loads((tiny_world / "world.json").read_text())
    assert meta["rows"]["impressions"] == read_table("impressions", tiny_world / "raw" / "impressions").num_rows
    assert set(meta["splits"]) == {"train", "valid", "test"}


def test_ids_refer_to_existing_rows(tiny_world):
    raw = lambda t: read_table(t, tiny_world / "raw" / t).to_pandas()  # noqa: E731
    products, queries, imp, rel, purchases = (
        raw(t) for t in ("products", "queries", "impressions", "relevance", "purchases"))
    assert imp.product_id.isin(products.product_id).all() and imp.query_id.isin(queries.query_id).all()
    assert rel.product_id.isin(products.product_id).all() and rel.query_id.isin(queries.query_id).all()
    created = products.set_index("product_id").created_ts
    assert (purchases.product_id.map(created) <= purchases.ts).all()
    assert (imp.product_id.map(created) <= imp.ts).all()
    # One request shows distinct products at positions 1..k.
    assert not imp.duplicated(["request_id", "product_id"]).any()
    first = imp.groupby("request_id").position.agg(["min", "max", "count"])
    assert (first["min"] == 1).all() and (first["max"] == first["count"]).all()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = _tiny_cfg()
    simulate.simulate(cfg, tmp_path / "a", progress=False)
    simulate.simulate(cfg, tmp_path / "b", progress=False)
    assert _file_digests(tmp_path / "a") == _file_digests(tmp_path / "b")
    simulate.simulate(_tiny_cfg(seed=8), tmp_path / "c", progress=False)
    assert _file_digests(tmp_path / "a")["raw/impressions/part-00000.parquet"] != \
        _file_digests(tmp_path / "c")["raw/impressions/part-00000.parquet"]


def test_a_failed_run_leaves_no_folder_and_keeps_the_old_one(tmp_path, monkeypatch):
    cfg = _tiny_cfg()
    out = tmp_path / "world"
    simulate.simulate(cfg, out, progress=False)
    before = _file_digests(out)

    def boom(world, day, *args):
        if day == 2:
            raise RuntimeError("killed mid-run")
        return real_simulate_day(world, day, *args)

    real_simulate_day = simulate.simulate_day
    monkeypatch.setattr(simulate, "simulate_day", boom)
    with pytest.raises(RuntimeError, match="killed mid-run"):
        simulate.simulate(_tiny_cfg(seed=9), out, overwrite=True, progress=False)
    assert _file_digests(out) == before  # the old world is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no partial folder left behind
    with pytest.raises(RuntimeError):
        simulate.simulate(cfg, tmp_path / "fresh", progress=False)
    assert not (tmp_path / "fresh").exists()


def test_refuses_to_overwrite_without_flag(tiny_world):
    with pytest.raises(FileExistsError, match="--overwrite"):
        simulate.simulate(_tiny_cfg(), tiny_world, progress=False)


def test_main_prints_the_summary(tmp_path, capsys):
    out = tmp_path / "w"
    assert simulate.main(["--config", str(TINY), "--out", str(out), "--no-progress", "requests_per_day=100"]) == 0
    printed = capsys.readouterr().out
    assert "oracle AUC" in printed and "label noise" in printed and "CTR" in printed
    meta = json.loads((out / "world.json").read_text())
    assert meta["config"]["requests_per_day"] == 100


def test_unknown_or_mistyped_config_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="n_prodcts"):
        simulate.main(["--config", str(TINY), "--out", str(tmp_path / "x"), "n_prodcts=10"])
    with pytest.raises(ConfigError, match="requests_per_day"):
        simulate.main(["--config", str(TINY), "--out", str(tmp_path / "x"), "requests_per_day=many"])
    with pytest.raises(ConfigError, match="label_noise"):
        simulate.main(["--config", str(TINY), "--out", str(tmp_path / "x"), "label_noise=0.9"])
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("extra, named", [(["n_users=-1"], "invalid value for 'n_users'"),
                                          (["--config", "missing.yaml"], "missing.yaml: config file not found")])
def test_command_line_bad_config_is_one_line_and_exit_2(tmp_path, extra, named):
    args = ["--config", str(TINY), "--out", str(tmp_path / "x"), *extra]
    done = subprocess.run([sys.executable, "-m", "experiments.simulate", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and named in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "x").exists()


def test_command_line_existing_folder_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "x").mkdir()
    done = subprocess.run([sys.executable, "-m", "experiments.simulate", "--config", str(TINY), "--out",
                           str(tmp_path / "x")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "pass --overwrite" in done.stderr and "Traceback" not in done.stderr


def test_an_out_folder_under_a_file_or_an_out_file_is_named(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"afile is a file, not a folder"):
        simulate.simulate(_tiny_cfg(), tmp_path / "afile" / "world", progress=False)
    with pytest.raises(NotADirectoryError, match=r"afile is a file, not a world folder"):
        simulate.simulate(_tiny_cfg(), tmp_path / "afile", overwrite=True, progress=False)
    assert (tmp_path / "afile").read_text() == "not a folder"
    done = subprocess.run([sys.executable, "-m", "experiments.simulate", "--config", str(TINY), "--out",
                           str(tmp_path / "afile" / "w")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"error: {tmp_path / 'afile' / 'w'}: {tmp_path / 'afile'} is a file, not a folder"


@pytest.mark.parametrize("boost", [2.0, 0.0, -0.7])
def test_fresh_products_are_drawn_1_plus_boost_times_as_often(boost):
    now = 100 * DAY_US
    world = SimpleNamespace(p_created_us=np.array([0, now - DAY_US]))  # product 0 is old, product 1 is fresh
    n = 200_000
    drawn = simulate.draw_products(world, np.zeros(n, np.int64), np.full(n, 2), np.full(n, now),
                                   np.random.default_rng(0), fresh_boost=boost)
    assert (drawn >= 0).all()
    assert (drawn == 1).mean() == pytest.approx((1 + boost) / (2 + boost), abs=0.005)
