"""feature_store.ann: FAISS retrieval against brute force, and the index over an embedding version's table."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from feature_store.ann import ProductIndex
from feature_store.schema import TIMESTAMP, embedding_array, write_table


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


def test_index_from_an_embedding_version(tmp_path):
    vectors = np.eye(3, 4, dtype=np.float32)
    folder = tmp_path / "embeddings" / "v1"
    write_table("product_embeddings", pa.table({
        "product_id": pa.array([10, 20, 30], pa.int64()), "embedding": embedding_array(vectors),
        "model_version": ["v1"] * 3, "event_ts": pa.array([0, 0, 0], pa.int64()).cast(TIMESTAMP)}),
        folder / "products", embedding_dim=4)
    (folder / "metadata.json").write_text(json.dumps({"embedding_version": "v1", "embedding_dim": 4}))
    index = ProductIndex.from_embeddings(tmp_path, "v1")
    ids, scores = index.search(vectors[[2, 0]], k=1)
    assert len(index) == 3 and ids.tolist() == [[30], [10]] and scores.tolist() == [[1.0], [1.0]]
    with pytest.raises(ValueError, match="unknown index kind 'ivf'"):
        ProductIndex.build([1], vectors[:1], kind="ivf")
