"""feature_store.store (FeatureRepo) on the tiny world with seeded stand-in embeddings: point-in-time correctness
against an independent naive-but-exact reference, leakage under mutation of the future, and clear errors for bad
input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.files import previous_version
from feature_store.features import ONLINE_COLUMNS, TRAINING_COLUMNS
from feature_store.schema import COUNT_ENTITIES, COUNT_WINDOWS_DAYS, SchemaError
from feature_store.store import FeatureRepo
from tests.feature_store.store_world import DIM, VERSION, late_product, run, training_set
from tests.helpers.embeddings import write_standin_embeddings

DAY = pd.Timedelta(days=1)
LABELS = ["click", "conversion"]
FEATURES = [c for c in TRAINING_COLUMNS if c not in LABELS]


# ---------------------------------------------------------------------------------------------------------------
# Point-in-time correctness against a naive, exact reference computed straight from the raw tables


def reference_features(data: Path, rows: pd.DataFrame) -> dict[int, dict]:
    imp = pd.read_parquet(data / "raw" / "impressions")
    imp["day"] = imp.ts.dt.floor("D")
    purchases = pd.read_parquet(data / "raw" / "purchases")
    products = pd.read_parquet(data / "raw" / "products", columns=["product_id", "aisle", "brand", "store_id",
                                                                     "price", "created_ts"]).set_index("product_id")
    emb = {e: pd.read_parquet(data / "embeddings" / VERSION / folder).set_index(f"{e}_id")
           for e, folder in (("product", "products"), ("query", "queries"))}
    out = {}
    for r in rows.itertuples():
        f = {}
        for entity in COUNT_ENTITIES:
            same = imp[imp[f"{entity}_id"] == getattr(r, f"{entity}_id")]
            for w in COUNT_WINDOWS_DAYS:
                window = same[(same.day >= r.ts.floor("D") - w * DAY) & (same.day < r.ts.floor("D"))]
                f[f"{entity}_impressions_{w}d"], f[f"{entity}_clicks_{w}d"] = len(window), window.click.sum()
        shown = imp[(imp.product_id == r.product_id) & (imp.ts < r.ts)].sort_values(["ts", "impression_id"])
        f["rating"] = shown.rating.iloc[-1] if len(shown) else 0.0
        f["rating_count"] = shown.rating_count.iloc[-1] if len(shown) else 0
        p = products.loc[r.product_id]
        f.update(aisle=p.aisle, brand=p.brand, store_id=p.store_id, price=p.price) if p.created_ts <= r.ts else \
            f.update(aisle="", brand="", store_id=0, price=0.0)
        f["product_age_days"] = np.float32((r.ts - p.created_ts) / DAY) if p.created_ts <= r.ts else 0.0
        for e in ("product", "query"):
            row = emb[e].loc[getattr(r, f"{e}_id")]
            f[f"{e}_embedding"] = row.embedding if row.event_ts <= r.ts else np.zeros(DIM, np.float32)
        bought = purchases[(purchases.user_id == r.user_id) & (purchases.ts < r.ts)]
        known = emb["product"].event_ts.reindex(bought.product_id).to_numpy() <= r.ts
        in_window = bought[known & (bought.ts >= r.ts - 84 * DAY).to_numpy()]
        vectors = np.stack(emb["product"].embedding.reindex(in_window.product_id).to_numpy()) if len(in_window) \
            else np.zeros((0, DIM))
        f["history_count"] = len(in_window)
        f["history_embedding"] = vectors.astype(np.float64).mean(0) if len(in_window) else np.zeros(DIM)
        f["naive_history_count"] = int(known.sum())  # every purchase before the impression, however old
        out[r.impression_id] = f
    return out


def test_features_equal_the_point_in_time_reference(built, ts_frame):
    pid, arrives = late_product(built)
    rng = np.random.default_rng(1)
    sample = ts_frame.loc[np.concatenate([rng.choice(ts_frame.index, 250, replace=False),
                                          ts_frame.index[ts_frame.product_id == pid]])].drop_duplicates("impression_id")
    expected = reference_features(built, sample)
    older_than_84_days = 0
    for r in sample.itertuples():
        want = expected[r.impression_id]
        for name in ONLINE_COLUMNS:
            if name in ("position", "device", "discount", "store_distance_km"):
                continue
            got = getattr(r, name)
            if name == "history_embedding":
                np.testing.assert_allclose(got, want[name], rtol=1e-5, atol=1e-6, err_msg=name)
            elif name.endswith("_embedding"):
                assert np.array_equal(got, want[name]), name  # bit for bit
            elif name == "product_age_days":
                assert got == pytest.approx(want[name], rel=1e-6, abs=1e-6)
            else:
                assert got == want[name], (name, r.impression_id, got, want[name])
        older_than_84_days += want["naive_history_count"] > want["history_count"]
    assert older_than_84_days >= 10  # purchases older than 84 days were really left out of the mean
    # the product whose vector arrived late: the zero vector before, its vector from then on
    late = sample[sample.product_id == pid]
    before, after = late[late.ts < arrives], late[late.ts >= arrives]
    assert len(before) and len(after)
    assert all(not np.any(v) for v in before.product_embedding)
    assert all(np.any(v) for v in after.product_embedding)


# ---------------------------------------------------------------------------------------------------------------
# Leakage: change everything after t, rebuild, and the features of every impression at or before t are the same


def test_changing_the_future_changes_no_feature_of_the_past(built, ts_frame, tmp_path):
    data = tmp_path / "tiny"
    shutil.copytree(built, data, ignore=shutil.ignore_patterns("features", "training_sets"))
    imp = pd.read_parquet(data / "raw" / "impressions")
    t = imp.ts.iloc[len(imp) // 2]  # mid-world, mid-day: same-day events after t exist
    after = imp.ts > t
    assert (after & (imp.ts.dt.floor("D") == t.floor("D"))).any()
    imp.loc[after, "click"] = 1 - imp.loc[after, "click"]  # every later click flipped
    extra = imp[after].head(500).copy()  # and more impressions later on
    extra["impression_id"] += imp.impression_id.max()
    extra["click"] = 1
    shutil.rmtree(data / "raw" / "impressions")
    pq.write_table(pa.Table.from_pandas(pd.concat([imp, extra]), preserve_index=False),
                   (data / "raw" / "impressions").mkdir() or data / "raw" / "impressions" / "part-00000.parquet")
    purchases = pd.read_parquet(data / "raw" / "purchases")
    users = imp.user_id[imp.ts <= t].unique()[:100]
    new = pd.DataFrame({"user_id": users, "product_id": imp.product_id.iloc[: len(users)].to_numpy(),
                        "ts": [t + pd.Timedelta(microseconds=1 + i) for i in range(len(users))],  # just after t
                        "quantity": np.ones(len(users), np.int32)})
    pq.write_table(pa.Table.from_pandas(pd.concat([purchases, new]), preserve_index=False),
                   data / "raw" / "purchases" / "part-00000.parquet")
    run("build", data)
    run("training-set", data)
    mutated = training_set(data)
    past = ts_frame.index[ts_frame.ts <= t]
    a, b = ts_frame.loc[past, FEATURES], mutated.loc[past, FEATURES]
    for name in FEATURES:  # bit-identical, column by column
        if name.endswith("_embedding"):
            assert np.array_equal(np.stack(a[name].to_numpy()), np.stack(b[name].to_numpy())), name
        else:
            assert a[name].equals(b[name]), name
    later = ts_frame.index[ts_frame.ts > t]  # the mutation did reach the later impressions
    assert not ts_frame.loc[later, "product_clicks_1d"].equals(mutated.loc[later, "product_clicks_1d"])
    assert not ts_frame.loc[later, "history_count"].equals(mutated.loc[later, "history_count"])


# ---------------------------------------------------------------------------------------------------------------
# Bad input: clear errors naming the table / column / key


def test_feature_view_over_a_table_that_fails_its_schema(built):
    path = built / "features" / "offline" / "product_count_features" / "part-00000.parquet"
    good = path.read_bytes()
    table = pq.read_table(path)
    broken = table.set_column(0, "product_id", pa.array([None] + table.column(0).to_pylist()[1:], pa.int64()))
    try:
        pq.write_table(broken, path)
        with pytest.raises(SchemaError, match=r"table 'product_count_features'.*column 'product_id'.*1 null key"):
            run("training-set", built)
        with pytest.raises(SchemaError, match=r"table 'product_count_features'"):
            run("materialize", built)
    finally:
        path.write_bytes(good)


def test_raw_table_failing_its_schema_stops_the_build(tiny_world, tmp_path):
    data = tmp_path / "tiny"
    shutil.copytree(tiny_world, data, ignore=shutil.ignore_patterns("hidden"))
    imp = pq.read_table(data / "raw" / "impressions" / "part-00000.parquet")
    imp = imp.set_column(imp.column_names.index("ad_id"), "ad_id", imp.column("ad_id").cast(pa.string()))
    pq.write_table(imp, data / "raw" / "impressions" / "part-00000.parquet")
    write_standin_embeddings(data, VERSION, DIM)
    with pytest.raises(SchemaError, match=r"table 'impressions'.*column 'ad_id': has dtype string"):
        run("build", data)


def test_embedding_dimension_must_match_the_registered_one(built):
    # a version whose table disagrees with its own metadata.json
    bad = built / "embeddings" / "bad-dim"
    shutil.copytree(built / "embeddings" / VERSION, bad)
    (bad / "metadata.json").write_text(json.dumps({"embedding_version": "bad-dim", "embedding_dim": 32}))
    with pytest.raises(SchemaError, match=r"table 'product_embeddings'.*column 'embedding'.*expected "
                                          r"embedding_dim 32, got length 16"):
        run("build", built, version="bad-dim")
    # a registered version whose embeddings changed dimension since
    meta = built / "embeddings" / VERSION / "metadata.json"
    good = meta.read_text()
    try:
        meta.write_text(json.dumps({**json.loads(good), "embedding_dim": 8}))
        with pytest.raises(SchemaError, match=r"'standin-v1' is registered with embedding_dim 16"):
            run("build", built)
        with pytest.raises(SchemaError, match=r"registered with embedding_dim 16.*now says 8"):
            run("training-set", built)
    finally:
        meta.write_text(good)


def test_entity_rows_with_null_keys_or_naive_timestamps_are_rejected(built):
    repo = FeatureRepo(built, VERSION)
    at = pd.Timestamp("2026-01-07", tz="UTC")
    rows = pd.DataFrame({"ts": [at, at], "user_id": pd.array([1, None], "Int64"), "query_id": [1, 2],
                         "product_id": [1, 2], "ad_id": [1, 2]})
    with pytest.raises(SchemaError, match=r"'entity rows'.*column 'user_id': 1 null key values \(rows \[1\]\)"):
        repo.historical(rows)
    with pytest.raises(SchemaError, match=r"'entity rows'.*column 'ts': timestamp without a time zone"):
        repo.historical(rows.assign(ts=[at.tz_localize(None)] * 2, user_id=[1, 2]))
    with pytest.raises(SchemaError, match=r"'entity rows'.*column 'ad_id': missing column"):
        repo.historical(rows.drop(columns="ad_id"))


def test_the_offline_store_and_training_sets_left_at_their_previous_names_by_a_kill_are_put_back(built, tmp_path):
    """A command killed between the two renames of a swap leaves the previous version only at its fixed name
    (core.files.previous_version); the next feature_store command puts it back before anything else."""
    data = tmp_path / "tiny"
    shutil.copytree(built, data)
    moved = [data / "features" / "offline", data / "training_sets" / VERSION]
    before = {p: sorted(f.relative_to(p) for f in p.rglob("*")) for p in moved}
    for folder in moved:
        folder.rename(previous_version(folder))
    with FeatureRepo(data, VERSION)._writing():
        assert {p: sorted(f.relative_to(p) for f in p.rglob("*")) for p in moved} == before
    assert not any(previous_version(p).exists() for p in moved)
    assert training_set(data).equals(training_set(built))
