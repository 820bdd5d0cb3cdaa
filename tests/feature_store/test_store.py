"""The feature store end to end on the tiny world with seeded stand-in embeddings: the CLI, point-in-time
correctness against an independent naive-but-exact reference, leakage under mutation of the future,
offline/online parity, and clear errors for bad input."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.config import ConfigError
from feature_store.__main__ import main
from feature_store.features import ONLINE_COLUMNS, TRAINING_COLUMNS
from feature_store.schema import COUNT_ENTITIES, COUNT_WINDOWS_DAYS, SchemaError, read_table
from feature_store.standin import write_standin_embeddings
from tests.conftest import ROOT

CONFIG = str(ROOT / "experiments" / "configs" / "features" / "tiny.yaml")
VERSION, DIM = "standin-v1", 16
DAY = pd.Timedelta(days=1)
LABELS = ["click", "conversion"]
FEATURES = [c for c in TRAINING_COLUMNS if c not in LABELS]


def run(command: str, data: Path, *overrides: str, version: str = VERSION) -> None:
    assert main([command, "--data", str(data), "--embeddings", version, "--config", CONFIG, "progress=false",
                 *overrides]) == 0


def training_set(data: Path, version: str = VERSION) -> pd.DataFrame:
    folder = data / "training_sets" / version
    parts = [read_table("training_set", folder / s, embedding_dim=DIM).to_pandas() for s in ("train", "valid", "test")]
    return pd.concat(parts, ignore_index=True).set_index("impression_id", drop=False).sort_index()


def late_product(data: Path) -> tuple[int, pd.Timestamp]:
    """The most shown product and the median time of its impressions: its vector will arrive then."""
    imp = pd.read_parquet(data / "raw" / "impressions", columns=["product_id", "ts"])
    pid = int(imp.product_id.value_counts().index[0])
    return pid, imp.ts[imp.product_id == pid].sort_values().iloc[len(imp[imp.product_id == pid]) // 2]


def make_world(tiny_world: Path, into: Path) -> Path:
    data = into / "tiny"
    shutil.copytree(tiny_world, data, ignore=shutil.ignore_patterns("hidden", "features", "training_sets"))
    pid, arrives = late_product(data)
    write_standin_embeddings(data, VERSION, DIM, seed=0, product_event_us={pid: arrives.value // 1000})
    return data


@pytest.fixture(scope="module")
def built(tiny_world, tmp_path_factory) -> Path:
    """The tiny world with stand-in embeddings, built and turned into training sets through the CLI."""
    data = make_world(tiny_world, tmp_path_factory.mktemp("fs"))
    run("build", data)
    run("training-set", data)
    return data


@pytest.fixture(scope="module")
def ts_frame(built) -> pd.DataFrame:
    return training_set(built)


# ---------------------------------------------------------------------------------------------------------------
# The CLI end to end


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
# Offline / online parity


def request_context(rows: pd.DataFrame) -> dict:
    return {"ts": rows.ts.iloc[0].to_pydatetime(), "device": rows.device.iloc[0],
            "position": rows.position.to_numpy(), "discount": rows.discount.to_numpy(),
            "store_distance_km": rows.store_distance_km.to_numpy()}


def test_online_features_equal_training_features(built, ts_frame):
    from feature_store.online import OnlineFeatures
    from feature_store.store import FeatureRepo

    world = json.loads((built / "world.json").read_text())
    requests = []
    for split in ("train", "valid", "test"):
        start, end = (pd.Timestamp(x) for x in world["splits"][split])
        in_split = ts_frame[(ts_frame.ts >= start + 0.5 * (end - start)) & (ts_frame.ts < end)]
        requests.append(in_split.request_id.iloc[0])
    repo = None
    for i, request_id in enumerate(requests):
        rows = ts_frame[ts_frame.request_id == request_id]
        at = rows.ts.iloc[0]
        if i == 0:
            run("materialize", built, f"materialize_end={at.isoformat()}")
            repo = FeatureRepo(built, VERSION)
        else:
            repo.materialize(at.to_pydatetime())
        online = OnlineFeatures(built, VERSION)
        got = online.get(int(rows.user_id.iloc[0]), int(rows.query_id.iloc[0]), rows.product_id.tolist(),
                         request_context(rows), ad_ids=rows.ad_id.tolist())
        assert list(got) == list(ONLINE_COLUMNS)
        for name in ONLINE_COLUMNS:
            want = rows[name].to_numpy()
            if name.endswith("_embedding"):
                want = np.stack(want)
                assert got[name].dtype == np.float32 and got[name].shape == (len(rows), DIM)
                assert np.array_equal(got[name].view(np.uint32), want.view(np.uint32)), name  # to the bit
            else:
                assert np.array_equal(got[name], want), (name, got[name], want)
    # unknown entities get the training defaults, identical to the offline path for the same rows
    at = ts_frame.ts.max()
    ctx = {"ts": at.to_pydatetime(), "device": "app", "position": 1, "discount": 0.0, "store_distance_km": 1.0}
    got = online.get(10**9, 10**9, [10**9, int(ts_frame.product_id.iloc[0])], ctx, ad_ids=[10**9, 10**9])
    assert not got["product_embedding"][0].any() and not got["query_embedding"].any()
    assert not got["history_embedding"].any() and got["history_count"].tolist() == [0, 0]
    assert got["aisle"][0] == "" and got["store_id"][0] == 0 and got["price"][0] == 0
    offline = repo.historical(pd.DataFrame({"ts": [at, at], "user_id": [10**9] * 2, "query_id": [10**9] * 2,
                                            "product_id": [10**9, int(ts_frame.product_id.iloc[0])],
                                            "ad_id": [10**9] * 2}))
    assert offline.column("history_count").null_count == 2 and offline.column("aisle").null_count == 1


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


def test_null_keys_and_naive_timestamps_are_rejected(built):
    from feature_store.online import OnlineFeatures
    from feature_store.store import FeatureRepo

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
    online = OnlineFeatures(built, VERSION)
    ctx = {"ts": at.to_pydatetime(), "device": "app", "position": 1, "discount": 0.0, "store_distance_km": 1.0}
    with pytest.raises(SchemaError, match=r"'online request'.*column 'product_id': 1 null key values"):
        online.get(1, 2, [1, None], ctx, ad_ids=[1, 2])
    with pytest.raises(SchemaError, match=r"'online request'.*column 'ts'.*no time zone"):
        online.get(1, 2, [1, 2], {**ctx, "ts": dt.datetime(2026, 1, 7)}, ad_ids=[1, 2])
    with pytest.raises(SchemaError, match=r"'online request'.*column 'ad_id'"):
        online.get(1, 2, [1, 2], ctx)
    with pytest.raises(ConfigError, match=r"'splits.train'.*no time zone"):
        run("training-set", built, "splits={train: ['2026-01-05T00:00:00', '2026-01-06T00:00:00']}")
