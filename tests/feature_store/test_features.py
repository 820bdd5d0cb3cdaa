"""feature_store.features: the one assembly of training-set columns shared by the offline and the online path."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from feature_store.derive import DAY_US as DAY
from feature_store.features import (
    DEFAULTS, ONLINE_COLUMNS, STORE_FEATURES, TRAINING_COLUMNS, assemble, feature_groups, fill_embedding,
    product_age_days,
)
from feature_store.schema import TABLES, TIMESTAMP

T0 = int(dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000  # a midnight, in us


def ts(us) -> pa.Array:
    return pa.array(np.asarray(us, np.int64)).cast(TIMESTAMP)


def test_missing_embeddings_become_zero_vectors_bit_for_bit():
    values = pa.array([[1.5, -2.0], None, [np.float32(0.1), 3.0]], pa.list_(pa.float32()))
    out = fill_embedding(values, 3, 2)
    assert out.to_pylist() == [[1.5, -2.0], [0.0, 0.0], [float(np.float32(0.1)), 3.0]]
    request = {"ts": ts([T0, T0 + DAY]), "position": pa.array([1, 2]), "device": pa.array(["app", "app"]),
               "discount": pa.array([0.0, 0.1]), "store_distance_km": pa.array([1.0, 2.0])}
    store = {"created_us": pa.array([T0 - DAY, None], pa.int64()), "aisle": pa.array(["dairy", None]),
             "product_embedding": pa.array([[1.0, 2.0], None], pa.list_(pa.float32()))}
    table = assemble(request, store, 2, columns=("product_age_days", "aisle", "product_embedding", "position"))
    assert table.column("product_age_days").to_pylist() == [1.0, 0.0]
    assert table.column("aisle").to_pylist() == ["dairy", ""]
    assert table.column("product_embedding").to_pylist() == [[1.0, 2.0], [0.0, 0.0]]
    assert table.schema.field("position").type == pa.int8()


def test_product_age_is_in_days_never_negative_and_zero_when_unknown():
    age = product_age_days(ts([T0 + DAY // 2, T0, T0]), pa.array([T0, T0 + DAY, None], pa.int64()))
    assert age.type == pa.float32() and age.to_pylist() == [0.5, 0.0, 0.0]


def test_unknown_store_values_take_the_defaults_with_the_training_dtypes():
    n = 2
    request = {c: pa.array([1, 2]) for c in ("impression_id", "request_id", "user_id", "query_id", "product_id",
                                            "ad_id", "campaign_id", "advertiser_id", "position")}
    request.update(ts=ts([T0, T0]), device=pa.array(["app", "web"]), discount=pa.array([0.0, 0.5]),
                   store_distance_km=pa.array([1.0, 2.0]), click=pa.array([0, 1]), conversion=pa.array([0, 0]))
    store = {f: pa.nulls(n) for f in STORE_FEATURES}
    table = assemble(request, store, 3)
    assert table.schema == TABLES["training_set"].arrow_schema
    row = table.slice(0, 1).to_pylist()[0]
    for name in (f for f in STORE_FEATURES if f != "created_us"):  # created_us becomes product_age_days
        want = [0.0] * 3 if name.endswith("_embedding") else DEFAULTS[name]
        assert row[name] == want, name
    assert row["product_age_days"] == 0.0 and row["device"] == "app" and row["discount"] == 0.0


def test_column_groups_cover_the_training_set_and_online_columns_leave_out_ids_and_labels():
    groups = feature_groups()
    roles = ("ids", "timestamp", "categorical", "dense", "counts", "history", "embeddings", "labels")
    assert sorted(c for role in roles for c in groups[role]) == sorted(TRAINING_COLUMNS)
    assert set(ONLINE_COLUMNS) == set(TRAINING_COLUMNS) - set(groups["labels"]) - {
        "impression_id", "request_id", "ts", "user_id", "query_id", "product_id", "ad_id", "campaign_id",
        "advertiser_id"}
