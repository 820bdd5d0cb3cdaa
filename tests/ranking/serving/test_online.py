"""The online scorer (`ranking.serving.online.OnlineRanker`) against direct calls of the exported SavedModel's
`serving_default` signature (the package's trained model: tests/ranking/serving/conftest.py).

`.rank` runs against a fake online store (`FakeOnline`, injected through OnlineRanker's `features=` parameter) that
serves the test split's rows of one request: building a Feast online store here would cost more than the module.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from tests.helpers.training_sets import numpy_columns

from feature_store.features import ONLINE_COLUMNS
from ranking.serving.online import OnlineRanker

DIM = 16  # make_training_set's embedding width


@pytest.fixture(scope="module")
def ranker(trained):
    return OnlineRanker(trained.version)


def test_score_equals_direct_calls(ranker, test_table, inputs, direct):
    rows = test_table.slice(100, 200)
    got = ranker.score(numpy_columns(rows, inputs))  # int8 / int32 / str columns are cast by the ranker
    assert got.shape == (200,) and got.dtype == np.float32
    assert np.abs(got - direct[100:300]).max() <= 1e-6


def test_score_empty_request_returns_empty(ranker, inputs):
    empty = {name: np.zeros((0, DIM) if len(e["shape"]) == 2 else 0,
                            np.float32 if e["dtype"] == "float32" else np.int64 if e["dtype"] == "int64" else object)
             for name, e in inputs.items()}
    got = ranker.score(empty)
    assert got.shape == (0,) and got.dtype == np.float32


@pytest.mark.parametrize("edit, match", [
    (lambda f: f.pop("query_embedding"), "missing model input 'query_embedding'"),
    (lambda f: f.__setitem__("product_id", f["product_id"].astype(np.float64)), "input 'product_id': expected int64"),
    (lambda f: f.__setitem__("price", f["price"].astype(str)), "input 'price': expected float32"),
    (lambda f: f.__setitem__("brand", np.arange(len(f["brand"]))), "input 'brand': expected string"),
    (lambda f: f.__setitem__("product_embedding", f["product_embedding"][:, :DIM - 1]),
     rf"input 'product_embedding': expected an embedding of shape \[8, {DIM}\]"),
    (lambda f: f.__setitem__("rating", f["rating"][:5]), r"input 'rating': expected shape \[8\]"),
])
def test_score_bad_input_names_it(ranker, test_table, inputs, edit, match):
    features = numpy_columns(test_table.slice(0, 8), inputs)
    edit(features)
    with pytest.raises(ValueError, match=match):
        ranker.score(features)


def test_unknown_ids_score_through_the_oov_buckets(ranker, test_table, inputs):
    """Ids never seen in training are not errors: they share the OOV row, so two different unknown product ids
    (and brands) give the same score, and that score is a probability."""
    features = numpy_columns(test_table.slice(0, 8), inputs)
    known = ranker.score(features)
    seen = set(test_table.column("product_id").to_pylist())
    a, b = 10**9 + 7, 10**9 + 9
    assert a not in seen and b not in seen
    first = ranker.score({**features, "product_id": np.full(8, a), "brand": np.array(["no such brand"] * 8)})
    second = ranker.score({**features, "product_id": np.full(8, b), "brand": np.array(["nor this one"] * 8)})
    assert np.all(np.isfinite(first)) and np.all((first > 0) & (first < 1))
    assert np.allclose(first, second, atol=1e-7)
    assert not np.allclose(first, known, atol=1e-4)  # the ids do matter: the OOV row is not the known rows


class FakeOnline:
    """An OnlineFeatureSource over fixed rows: `get` returns the online columns (no ids) of the candidates."""

    embedding_dim = DIM

    def __init__(self, rows: pa.Table, inputs: dict):
        cols = numpy_columns(rows, inputs)
        self.by_product = {int(p): i for i, p in enumerate(rows.column("product_id").to_pylist())}
        self.columns = {name: cols[name] for name in ONLINE_COLUMNS if name in cols}
        self.calls = []

    def get(self, user_id, query_id, product_ids, context, ad_ids=None):
        self.calls.append((user_id, query_id, list(product_ids), list(ad_ids)))
        take = np.array([self.by_product[p] for p in product_ids], np.int64)
        return {name: values[take] for name, values in self.columns.items()}


def test_rank_orders_candidates_by_probability(trained, test_table, inputs):
    request = test_table.filter(pc.equal(test_table.column("request_id"), test_table.column("request_id")[0]))
    products = request.column("product_id").to_pylist()
    if len(set(products)) < len(products):  # a product twice in a request: keep the first (FakeOnline's key)
        keep = sorted({p: i for i, p in reversed(list(enumerate(products)))}.values())
        request = request.take(keep)
        products = request.column("product_id").to_pylist()
    fake = FakeOnline(request, inputs)
    ranker = OnlineRanker(trained.version, features=fake)
    user, query = request.column("user_id")[0].as_py(), request.column("query_id")[0].as_py()
    ads = request.column("ad_id").to_pylist()
    # Reversed candidate order: the ranking must not depend on it.
    context = {"campaign_id": request.column("campaign_id").to_numpy()[::-1],
               "advertiser_id": request.column("advertiser_id").to_numpy()[::-1], "ts": None}
    ranked = ranker.rank(user, query, products[::-1], ads[::-1], context)

    assert fake.calls == [(user, query, products[::-1], ads[::-1])]
    assert list(ranked.columns) == ["product_id", "ad_id", "probability"]
    assert sorted(ranked.product_id) == sorted(products)
    assert np.all(np.diff(ranked.probability.to_numpy()) <= 0)  # descending
    expected = ranker.score(numpy_columns(request, inputs))  # the same rows scored in table order
    by_product = dict(zip(products, expected))
    assert np.abs(ranked.probability.to_numpy() - [by_product[p] for p in ranked.product_id]).max() <= 1e-6
    assert [dict(zip(products, ads))[p] for p in ranked.product_id] == ranked.ad_id.tolist()

    assert ranker.rank(user, query, [], [], {"campaign_id": [], "advertiser_id": []}).empty

    with pytest.raises(ValueError, match="model input 'campaign_id'"):
        ranker.rank(user, query, products, ads, {"advertiser_id": 3})


def test_ranker_rejects_a_store_of_another_embedding_width(trained, test_table, inputs):
    fake = FakeOnline(test_table.slice(0, 4), inputs)
    fake.embedding_dim = 32
    with pytest.raises(ValueError, match="width 32"):
        OnlineRanker(trained.version, features=fake)


def test_rank_without_a_feature_source_says_what_to_pass(ranker):
    with pytest.raises(ValueError, match="no feature source: pass features="):
        ranker.rank(1, 2, [3], [4], {})
