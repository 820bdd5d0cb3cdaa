"""`python -m feature_store build` is all or nothing: every input is validated (and refused when empty) before
anything is written, the feature tables are staged in a copy of the offline folder that replaces it in one
swap, so a build that fails on bad input or is killed mid-build leaves the previous offline store, the rendered
repo and the registry byte for byte as they were; the rerun ends where an uninterrupted build does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from feature_store.schema import SchemaError
from tests.feature_store.store_world import CONFIG, VERSION, make_world, run
from tests.reliability.processes import entry_env, killed


def snapshot(features: Path) -> dict[str, bytes]:
    """Every file of the offline store, the rendered repo and the registry, by relative path (the lock and
    staging entries excluded: they are hidden and no reader looks at them)."""
    files = [p for p in features.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(features).parts)]
    return {str(p.relative_to(features)): p.read_bytes() for p in sorted(files)
            if p.name != "online.db"}


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory) -> Path:
    data = make_world(tiny_world, tmp_path_factory.mktemp("fs_build"))
    run("build", data)
    return data


def empty_like(folder: Path) -> None:
    """Replace a raw table's parts with one part of the same schema and no rows."""
    schema = pq.read_schema(sorted(folder.glob("*.parquet"))[0])
    for part in folder.glob("*.parquet"):
        part.unlink()
    pq.write_table(schema.empty_table(), folder / "part-00000.parquet")


@pytest.mark.parametrize("table", ["impressions", "purchases", "products"])
def test_an_empty_input_table_is_refused_naming_it_and_nothing_changes(world, table, tmp_path):
    before = snapshot(world / "features")
    folder = world / "raw" / table
    saved = tmp_path / table
    shutil.copytree(folder, saved)
    try:
        empty_like(folder)
        with pytest.raises(SchemaError, match=rf"table '{table}' \({folder}\): the table has no rows"):
            run("build", world)
    finally:
        shutil.rmtree(folder)
        shutil.copytree(saved, folder)
    assert snapshot(world / "features") == before


def test_a_bad_input_stops_the_build_before_any_table_is_rewritten(world, tmp_path):
    """The last input read (purchases) fails its contract: no table is rewritten, though the earlier inputs and
    their tables were fine (before: the tables derived from them were already rewritten)."""
    before = snapshot(world / "features")
    part = world / "raw" / "purchases" / "part-00000.parquet"
    good = part.read_bytes()
    table = pq.read_table(part)
    try:
        pq.write_table(table.set_column(table.column_names.index("user_id"), "user_id",
                                        pc.cast(table.column("user_id"), pa.string())), part)
        with pytest.raises(SchemaError, match=r"table 'purchases'.*column 'user_id'"):
            run("build", world)
    finally:
        part.write_bytes(good)
    assert snapshot(world / "features") == before


def test_killed_mid_build_leaves_the_previous_store_and_the_rerun_equals_an_uninterrupted_build(
        world, tiny_world, tmp_path):
    """New inputs (the last day's impressions dropped: every count and rating table changes); the build is
    SIGKILLed after 5 of its 9 tables were written (into the staged folder): the offline store, repo and
    registry are byte-identical to the previous build's. The rerun's offline store is byte-identical to an
    uninterrupted build's on the same inputs (parquet writes are byte-deterministic)."""
    data = make_world(tiny_world, tmp_path / "a")
    run("build", data)
    before = snapshot(data / "features")
    reference = make_world(tiny_world, tmp_path / "b")
    for d in (data, reference):
        part = d / "raw" / "impressions" / "part-00000.parquet"
        imp = pq.read_table(part)
        last = pc.max(imp.column("ts")).as_py().replace(hour=0, minute=0, second=0, microsecond=0)
        pq.write_table(imp.filter(pc.less(imp.column("ts"), pa.scalar(last, imp.column("ts").type))), part)
    killed(["-m", "feature_store", "build", "--data", str(data), "--embeddings", VERSION, "--config", CONFIG,
            "progress=false"], entry_env(tmp_path), "before-rename:*/features/.offline.tmp-*/*.parquet#5")
    assert snapshot(data / "features") == before
    run("build", data)
    run("build", reference)
    after, expected = snapshot(data / "features"), snapshot(reference / "features")
    offline = {k: v for k, v in after.items() if k.startswith("offline/")}
    assert offline == {k: v for k, v in expected.items() if k.startswith("offline/")}
    assert offline != {k: v for k, v in before.items() if k.startswith("offline/")}
    assert sorted(p.name for p in (data / "features").iterdir()) == [".lock", "offline", "online.db", "registry.db", "repo"]
