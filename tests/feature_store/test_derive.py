"""Feature-table batch jobs at their exact time boundaries, and FAISS retrieval against brute force (no Feast)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from feature_store import derive, schema
from feature_store.ann import ProductIndex
from feature_store.features import assemble, fill_embedding
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


def _embeddings(vectors: dict[int, list[float]], event_us: dict[int, int]) -> pa.Table:
    ids = sorted(vectors)
    return pa.table({"product_id": pa.array(ids, pa.int64()),
                     "embedding": pa.array([vectors[i] for i in ids], pa.list_(pa.float32())),
                     "model_version": pa.array(["t"] * len(ids)), "event_ts": ts([event_us[i] for i in ids])})


def _purchases(rows: list[tuple[int, int, int]]) -> pa.Table:
    user, pid, us = (np.array(c, np.int64) for c in zip(*rows))
    return pa.table({"user_id": pa.array(user), "product_id": pa.array(pid), "ts": ts(us),
                     "quantity": pa.array(np.ones(len(user), np.int32))})


def test_history_window_is_strictly_after_the_purchase_and_84_days_long():
    emb = _embeddings({1: [1.0, 0.0], 2: [0.0, 1.0]}, {1: 0, 2: 0})
    p1, p2 = T0, T0 + 10 * DAY
    table = derive.user_history_features(_purchases([(7, 1, p1), (7, 2, p2)]), emb, 2, history_days=84)
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
    emb = _embeddings({1: [1.0, 0.0], 2: [0.0, 1.0]}, {1: 0, 2: late})
    table = derive.user_history_features(_purchases([(7, 1, T0), (7, 2, T0 + DAY)]), emb, 2)
    assert lookup(table, "user_id", 7, late - 1)["history_embedding"] == [1.0, 0.0]
    assert lookup(table, "user_id", 7, late)["history_embedding"] == [0.5, 0.5]
    # a purchase of a product without any vector is left out
    table = derive.user_history_features(_purchases([(7, 1, T0), (7, 3, T0 + 1)]), emb, 2)
    assert lookup(table, "user_id", 7, T0 + DAY)["history_count"] == 1


def test_history_keep_from_preserves_values_from_then_on():
    emb = _embeddings({1: [1.0, 0.0], 2: [0.0, 1.0]}, {1: 0, 2: 0})
    purchases = _purchases([(7, 1, T0), (7, 2, T0 + 3 * DAY), (7, 1, T0 + 20 * DAY), (8, 2, T0 + DAY)])
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


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_faiss_index_matches_brute_force(kind):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1000, 1500, dtype=np.int64)
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    index = ProductIndex.build(ids, vectors, kind=kind)
    got_ids, got_scores = index.search(queries, k=10)
    scores = queries @ vectors.T
    best = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    if kind == "flat":  # exact: the same ids and scores as brute force
        assert np.array_equal(got_ids, ids[best])
        np.testing.assert_allclose(got_scores, np.take_along_axis(scores, best, 1), rtol=1e-5, atol=1e-6)
    else:  # approximate: nearly all of the true top 10
        recall = np.mean([len(set(g) & set(t)) / 10 for g, t in zip(got_ids, ids[best])])
        assert recall >= 0.9
    assert len(index) == 500
    padded_ids, padded_scores = ProductIndex.build(ids[:3], vectors[:3]).search(queries[:1], k=5)
    assert padded_ids[0, 3:].tolist() == [-1, -1] and np.isneginf(padded_scores[0, 3:]).all()


def test_online_reads_float_lists_bit_for_bit():
    from feast.protos.feast.types.Value_pb2 import FloatList

    from feature_store.online import _floats

    values = np.array([0.1, -3.5e-8, np.inf, 1e38, 0.0], np.float32)
    for n in (0, 1, 5):
        got = _floats(FloatList(val=values[:n].tolist()))
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), values[:n].view(np.uint32))
    long = np.random.default_rng(0).standard_normal(300).astype(np.float32)  # a 2-byte length varint
    assert np.array_equal(_floats(FloatList(val=long.tolist())), long)


def test_checked_embedding_matrix_names_the_column_and_the_problem():
    class MyError(ValueError):
        pass

    rows = [[0.5, 0.25], [1.0, -1.0]]
    for column in (pa.array(rows, pa.list_(pa.float32())), pa.array(rows, pa.list_(pa.float64(), 2)),
                   pa.chunked_array([pa.array(rows[:1]), pa.array(rows[1:])])):
        values = schema.checked_embedding_matrix(column, "product_embedding", 2)
        assert values.dtype == np.float32 and values.tolist() == rows
    with pytest.raises(MyError, match=r"^f.parquet: embedding column 'e' has 1 null rows"):
        schema.checked_embedding_matrix(pa.array([[1.0, 0.0], None]), "e", 2, "f.parquet: ", MyError)
    with pytest.raises(ValueError, match=r"column 'e' should have width 2 but 1 of 3 rows .*\(e\.g\. 3, row 1\)"):
        schema.checked_embedding_matrix(pa.array([[1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0]]), "e", 2)
    with pytest.raises(ValueError, match="should have width 4 but 2 of 2 rows"):
        schema.checked_embedding_matrix(pa.array(rows, pa.list_(pa.float32(), 2)), "e", 4)
    with pytest.raises(ValueError, match="column 'e' has NaN components"):
        schema.checked_embedding_matrix(pa.array([[1.0, float("nan")]]), "e", 2)
