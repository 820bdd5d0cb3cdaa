"""feature_store.derive: the feature-table batch jobs at their exact time boundaries (no Feast)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from feature_store import derive
from feature_store.schema import TIMESTAMP, SchemaError, validate

DAY = derive.DAY_US
T0 = int(dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000  # a midnight, in us


def ts(us) -> pa.Array:
    return pa.array(np.asarray(us, np.int64)).cast(TIMESTAMP)


def lookup(table: pa.Table, key: str, entity: int, at_us: int) -> dict | None:
    """The point-in-time rule every consumer applies: the entity's latest row with event_ts <= at."""
    rows = [r for r in table.to_pylist() if r[key] == entity and r["event_ts"].timestamp() * 1e6 <= at_us]
    return max(rows, key=lambda r: r["event_ts"]) if rows else None


def impressions(rows: list[tuple[int, int, int]]) -> pa.Table:
    """(product_id, ts_us, click) rows -> the impression columns the count jobs read."""
    pid, us, click = (np.array(c, np.int64) for c in zip(*rows))
    n = len(pid)
    return pa.table({"impression_id": pa.array(np.arange(1, n + 1)), "ts": ts(us), "user_id": pa.array(pid),
                     "query_id": pa.array(pid), "product_id": pa.array(pid), "ad_id": pa.array(pid),
                     "click": pa.array(click.astype(np.int8)), "rating": pa.array(np.full(n, 4.0, np.float32)),
                     "rating_count": pa.array(np.full(n, 3, np.int32))})


def test_counts_see_only_whole_days_before():
    # product 1: impressions on day 0 (one clicked, one at 23:59:59.999999) and day 2; product 2 on day 1
    imp = impressions([(1, T0 + 3600e6, 1), (1, T0 + DAY - 1, 0), (1, T0 + 2 * DAY, 1), (2, T0 + DAY + 5, 0)])
    table = derive.count_features("product", imp)
    counts = lambda at: lookup(table, "product_id", 1, at) or {}  # noqa: E731
    assert counts(T0 + DAY - 1) == {}  # the same day's impressions are never counted
    row = counts(T0 + DAY)  # day 1 00:00: day 0 counted in both windows
    assert (row["product_impressions_1d"], row["product_clicks_1d"], row["product_impressions_7d"]) == (2, 1, 2)
    row = counts(T0 + 2 * DAY + 10)  # day 2: day 0 left the 1-day window, the day-2 click is not yet counted
    assert (row["product_impressions_1d"], row["product_impressions_7d"], row["product_clicks_7d"]) == (0, 2, 1)
    row = counts(T0 + 3 * DAY)
    assert (row["product_impressions_1d"], row["product_clicks_1d"], row["product_impressions_7d"]) == (1, 1, 3)
    row = counts(T0 + 8 * DAY)  # day 0 left the 7-day window
    assert (row["product_impressions_7d"], row["product_clicks_7d"]) == (1, 1)
    assert counts(T0 + 10 * DAY - 1)["product_impressions_7d"] == 1
    row = counts(T0 + 10 * DAY)  # everything left: a row brings the counts back to zero
    assert all(row[n] == 0 for n in row if n.startswith("product_") and n != "product_id")
    assert lookup(table, "product_id", 2, T0 + 2 * DAY)["product_impressions_1d"] == 1
    # rows only where a value changes: days 1, 2, 3, 4 (day 2 leaves the 1-day window), 8 and 10
    days = sorted((r["event_ts"].timestamp() * 1e6 - T0) / DAY for r in table.to_pylist() if r["product_id"] == 1)
    assert days == [1, 2, 3, 4, 8, 10]


def test_counts_of_a_day_ignore_everything_from_that_day_on():
    base = [(1, T0 + 100, 0), (1, T0 + DAY + 100, 1)]
    later = base + [(1, T0 + DAY + 200, 1), (1, T0 + 2 * DAY + 5, 1)]  # more clicks from day 1 on
    a, b = derive.count_features("product", impressions(base)), derive.count_features("product", impressions(later))
    for at in (T0 + DAY, T0 + DAY + 150, T0 + 2 * DAY - 1):
        assert lookup(a, "product_id", 1, at) == lookup(b, "product_id", 1, at)


def _embedding_table(vectors: dict[int, list[float]], event_us: dict[int, int]) -> pa.Table:
    ids = sorted(vectors)
    return pa.table({"product_id": pa.array(ids, pa.int64()),
                     "embedding": pa.array([vectors[i] for i in ids], pa.list_(pa.float32())),
                     "model_version": pa.array(["t"] * len(ids)), "event_ts": ts([event_us[i] for i in ids])})


def _purchase_table(rows: list[tuple[int, int, int]]) -> pa.Table:
    user, pid, us = (np.array(c, np.int64) for c in zip(*rows))
    return pa.table({"user_id": pa.array(user), "product_id": pa.array(pid), "ts": ts(us),
                     "quantity": pa.array(np.ones(len(user), np.int32))})


def test_history_window_is_strictly_after_the_purchase_and_84_days_long():
    emb = _embedding_table({1: [1.0, 0.0], 2: [0.0, 1.0]}, {1: 0, 2: 0})
    p1, p2 = T0, T0 + 10 * DAY
    table = derive.user_history_features(_purchase_table([(7, 1, p1), (7, 2, p2)]), emb, 2, history_days=84)
    at = lambda t: lookup(table, "user_id", 7, t)  # noqa: E731
    assert at(p1) is None  # a purchase is not known at its own instant
    assert at(p1 + 1)["history_count"] == 1 and at(p1 + 1)["history_embedding"] == [1.0, 0.0]
    assert at(p2 + 1)["history_embedding"] == [0.5, 0.5] and at(p2 + 1)["history_count"] == 2
    assert at(p1 + 84 * DAY)["history_count"] == 2  # exactly 84 days later it still counts
    assert at(p1 + 84 * DAY + 1)["history_count"] == 1  # one microsecond more and it is out of the window
    assert at(p1 + 84 * DAY + 1)["history_embedding"] == [0.0, 1.0]
    last = at(p2 + 84 * DAY + 1)  # the window empties: a zero row, the same as the default
    assert last["history_count"] == 0 and last["history_embedding"] == [0.0, 0.0]


def test_history_counts_a_product_only_once_its_vector_exists():
    late = T0 + 5 * DAY
    emb = _embedding_table({1: [1.0, 0.0], 2: [0.0, 1.0]}, {1: 0, 2: late})
    table = derive.user_history_features(_purchase_table([(7, 1, T0), (7, 2, T0 + DAY)]), emb, 2)
    assert lookup(table, "user_id", 7, late - 1)["history_embedding"] == [1.0, 0.0]
    assert lookup(table, "user_id", 7, late)["history_embedding"] == [0.5, 0.5]
    # a purchase of a product without any vector is left out
    table = derive.user_history_features(_purchase_table([(7, 1, T0), (7, 3, T0 + 1)]), emb, 2)
    assert lookup(table, "user_id", 7, T0 + DAY)["history_count"] == 1


def test_history_keep_from_preserves_values_from_then_on():
    emb = _embedding_table({1: [1.0, 0.0], 2: [0.0, 1.0]}, {1: 0, 2: 0})
    purchases = _purchase_table([(7, 1, T0), (7, 2, T0 + 3 * DAY), (7, 1, T0 + 20 * DAY), (8, 2, T0 + DAY)])
    full = derive.user_history_features(purchases, emb, 2)
    cut = T0 + 10 * DAY
    small = derive.user_history_features(purchases, emb, 2, keep_from_us=cut)
    assert small.num_rows < full.num_rows
    for user in (7, 8):
        for at in (cut, cut + 1, T0 + 20 * DAY + 1, T0 + 100 * DAY):
            assert lookup(small, "user_id", user, at) == lookup(full, "user_id", user, at)


def test_rating_is_known_only_after_the_impression_that_showed_it():
    imp = impressions([(1, T0 + 10, 0), (1, T0 + 20, 0)])
    imp = imp.set_column(imp.column_names.index("rating"), "rating", pa.array([4.0, 4.5], pa.float32()))
    table = derive.product_rating_features(imp)
    assert lookup(table, "product_id", 1, T0 + 10) is None
    assert lookup(table, "product_id", 1, T0 + 11)["rating"] == 4.0
    assert lookup(table, "product_id", 1, T0 + 20)["rating"] == 4.0
    assert lookup(table, "product_id", 1, T0 + 21)["rating"] == 4.5


def test_feature_tables_follow_their_schema():
    table = derive.count_features("product", impressions([(1, T0, 0)]))
    with pytest.raises(SchemaError, match=r"table 'product_count_features'.*column 'product_id'.*null key"):
        validate("product_count_features", table.set_column(0, "product_id", pa.nulls(table.num_rows, pa.int64())))


def test_embedding_features_rename_the_vector_and_sort_by_key():
    emb = pa.table({"product_id": pa.array([2, 1], pa.int64()),
                    "embedding": pa.array([[0.0, 1.0], [1.0, 0.0]], pa.list_(pa.float32())),
                    "model_version": ["t", "t"], "event_ts": ts([T0 + DAY, T0])})
    table = derive.embedding_features("product", emb)
    assert table.column_names == ["product_id", "event_ts", "product_embedding"]
    assert table.column("product_id").to_pylist() == [1, 2]
    assert table.column("product_embedding").to_pylist() == [[1.0, 0.0], [0.0, 1.0]]
    assert table.column("event_ts").cast(pa.int64()).to_pylist() == [T0, T0 + DAY]


def test_product_attributes_take_effect_at_creation_and_keep_it_in_microseconds():
    products = pa.table({"product_id": pa.array([5, 3], pa.int64()), "aisle": ["dairy", "snacks"],
                         "brand": ["a", "b"], "store_id": pa.array([1, 2], pa.int64()),
                         "price": pa.array([1.5, 2.0], pa.float32()), "created_ts": ts([T0 + 7, T0 - DAY])})
    table = derive.product_attribute_features(products)
    assert table.column("product_id").to_pylist() == [3, 5]
    assert table.column("created_us").to_pylist() == [T0 - DAY, T0 + 7]
    assert table.column("event_ts").cast(pa.int64()).to_pylist() == [T0 - DAY, T0 + 7]
    assert table.column("aisle").to_pylist() == ["snacks", "dairy"]
