"""DashCLIP evaluation math on hand-made arrays: retrieval recall / nDCG, cosine AUC, the linear probe."""

from __future__ import annotations

import numpy as np
import pytest

from embeddings.metrics import (aisle_accuracy, auc_2v0, judged_ndcg, judged_recall, linear_probe, pair_features,
                                retrieval)


def test_retrieval_recall_and_ndcg_by_hand():
    p = np.eye(4, dtype=np.float32)  # 4 products, orthogonal
    q = np.array([[0.9, 0.5, 0.1, 0.0]], np.float32)  # ranks products 0, 1, 2, 3
    recall, ndcg = retrieval(p, q, [{1: 2, 0: 1}], k=2)
    assert recall == 1.0  # the one relevant product is in the top 2
    dcg = (2**1 - 1) / np.log2(2) + (2**2 - 1) / np.log2(3)
    idcg = (2**2 - 1) / np.log2(2) + (2**1 - 1) / np.log2(3)
    assert ndcg == pytest.approx(dcg / idcg)
    recall, _ = retrieval(p, q, [{2: 2, 3: 2}], k=2)
    assert recall == 0.0
    assert auc_2v0(np.array([2, 0, 1, 2, 0]), np.array([0.9, 0.1, 0.5, 0.8, 0.85])) == pytest.approx(0.75)


def test_linear_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8))
    y = rng.integers(3, size=300)
    x = (centres[y] + 0.1 * rng.normal(size=(300, 8))) * 0.01  # tiny scale, as unit-norm embeddings have
    assert (linear_probe(x[:200], y[:200].astype(str), x[200:]) == y[200:].astype(str)).mean() > 0.95


def test_aisle_accuracy_scores_the_rows_outside_the_training_mask():
    rng = np.random.default_rng(1)
    aisles = np.array(["dairy", "bakery", "drinks"])[rng.integers(3, size=120)]
    centres = {"dairy": [1.0, 0.0], "bakery": [0.0, 1.0], "drinks": [-1.0, -1.0]}
    emb = np.array([centres[a] for a in aisles]) + 0.05 * rng.normal(size=(120, 2))
    train = np.arange(120) < 80
    assert aisle_accuracy(emb, aisles, train) == 1.0
    shuffled = aisles.copy()
    shuffled[~train] = np.roll(aisles[~train], 1)  # held-out labels that do not follow the embeddings
    assert aisle_accuracy(emb, shuffled, train) < 0.6


def test_pair_features_are_product_difference_and_cosine():
    p = np.array([[0.6, 0.8], [1.0, 0.0]])
    q = np.array([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(pair_features(p, q), [[0.0, 0.8, 0.6, 0.2, 0.8], [1.0, 0.0, 0.0, 0.0, 1.0]])


def test_judged_ndcg_and_recall_by_hand():
    # query 7: judged items with gains 1.0 (E), 0.1 (S), 0 (I); ranked S, E, I by score
    # query 3: one E ranked first; query 5: only gain 0 (no nDCG), but one relevant for recall? none -> skipped
    q = np.array([7, 7, 7, 3, 3, 5])
    gains = np.array([1.0, 0.1, 0.0, 1.0, 0.0, 0.0])
    scores = np.array([0.5, 0.9, 0.1, 0.8, 0.2, 0.3])
    dcg7 = 0.1 / np.log2(2) + 1.0 / np.log2(3)
    idcg7 = 1.0 / np.log2(2) + 0.1 / np.log2(3)
    assert judged_ndcg(q, gains, scores) == pytest.approx((dcg7 / idcg7 + 1.0) / 2)
    assert judged_ndcg(q, gains, scores, k=1) == pytest.approx((0.1 + 1.0) / 2)
    exact = gains == 1.0
    assert judged_recall(q, exact, scores, k=1) == pytest.approx((0.0 + 1.0) / 2)
    assert judged_recall(q, exact, scores) == pytest.approx(1.0)
    # ties keep the input order
    assert judged_ndcg(np.zeros(2), np.array([0.0, 1.0]), np.zeros(2), k=1) == 0.0
