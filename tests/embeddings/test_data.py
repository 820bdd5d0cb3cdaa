"""DashCLIP data and evaluation math: catalog loading and its bad rows, hold-out split, stage-2 pair sampling,
retrieval metrics and the linear probe. No model is trained here."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from tests.helpers.tables import rewrite_raw_table

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from embeddings import data as D  # noqa: E402
from embeddings.evaluate import _auc_2v0, linear_probe, retrieval, world_judgments  # noqa: E402
from feature_store.schema import read_table  # noqa: E402


@pytest.fixture()
def world(tiny_world, tmp_path):
    shutil.copytree(tiny_world, tmp_path / "tiny")
    return tmp_path / "tiny"


def _products(world):
    return read_table("products", world / "raw" / "products").to_pandas()


def test_catalog_decodes_every_picture_in_product_order(tiny_world):
    cat = D.load_catalog(tiny_world, 32)
    products = _products(tiny_world)
    assert (cat.product_ids == products.product_id.to_numpy()).all() and cat.titles == products.title.tolist()
    assert cat.pixels.shape == (len(products), 3, 32, 32) and cat.skipped_images == []
    text_only = D.load_catalog(tiny_world, 32, with_images=False)
    assert text_only.pixels is None and len(text_only) == len(products)


def test_empty_title_names_the_product(world):
    products = _products(world)
    products.loc[7, "title"] = ""
    rewrite_raw_table(world, "products", products)
    with pytest.raises(ValueError, match=f"product_id {products.product_id[7]}: empty title"):
        D.load_catalog(world, 32)


@pytest.mark.parametrize("picture, problem", [(None, "missing image"), (b"", "empty image"),
                                              (b"GIF89a....", "not a PNG file"),
                                              (b"\x89PNG\r\n\x1a\n-truncated", "unreadable image")])
def test_bad_picture_names_the_product_unless_skipping_was_asked_for(world, picture, problem):
    products = _products(world)
    products["image"] = products.image.astype(object)
    products.at[3, "image"] = picture
    rewrite_raw_table(world, "products", products)
    with pytest.raises(ValueError, match=f"product_id {products.product_id[3]}: {problem}"):
        D.load_catalog(world, 32)
    # a text-only catalog does not read the pictures at all
    assert len(D.load_catalog(world, 32, with_images=False)) == len(products)
    cat = D.load_catalog(world, 32, skip_corrupt_images=True)
    assert cat.skipped_images == [int(products.product_id[3])] and len(cat) == len(products) - 1
    # relevance rows of a skipped product go with it; they are not "unknown products"
    rel = D.load_relevance(world, cat, D.load_queries(world))
    assert not rel.product_id.isin(cat.skipped_images).any()


def test_relevance_row_with_unknown_ids_is_named(world):
    rel = read_table("relevance", world / "raw" / "relevance").to_pandas()
    cat, queries = D.load_catalog(world, 32, with_images=False), D.load_queries(world)
    bad = pd.concat([rel, rel.iloc[:1].assign(query_id=987_654)], ignore_index=True)
    rewrite_raw_table(world, "relevance", bad)
    with pytest.raises(ValueError, match=f"unknown query_id; first: row {len(rel)} .query_id=987654"):
        D.load_relevance(world, cat, queries)
    bad = pd.concat([rel, rel.iloc[:1].assign(product_id=999_999)], ignore_index=True)
    rewrite_raw_table(world, "relevance", bad)
    with pytest.raises(ValueError, match="unknown product_id.*product_id=999999"):
        D.load_relevance(world, cat, queries)


def test_holdout_keeps_new_products_and_a_seeded_share_out(tiny_world):
    cat = D.load_catalog(tiny_world, 32, with_images=False)
    rel = D.load_relevance(tiny_world, cat, D.load_queries(tiny_world))
    end = D.train_window_end(tiny_world)
    new = (cat.created_ts >= end).to_numpy()
    assert new.any() and not rel.product_id.isin(cat.product_ids[new]).any()  # the simulator labels old ones only
    h = D.make_holdout(cat, rel, tiny_world, query_share=0.25, product_share=0.2, seed=3)
    assert not h.train_products[new].any()
    assert 0.1 < (~h.train_products[~new]).mean() < 0.3  # the seeded share of old products
    queries = rel.query_id.unique()
    assert 0.15 < len(h.heldout_queries) / len(queries) < 0.35 and set(h.heldout_queries) <= set(queries)
    again = D.make_holdout(cat, rel, tiny_world, query_share=0.25, product_share=0.2, seed=3)
    assert (again.train_products == h.train_products).all() and (again.heldout_queries == h.heldout_queries).all()
    other = D.make_holdout(cat, rel, tiny_world, query_share=0.25, product_share=0.2, seed=4)
    assert (other.heldout_queries.shape != h.heldout_queries.shape) or (other.heldout_queries != h.heldout_queries).any()


def _relevance():
    # product 1: positives q1, q2; negatives q3 (label 0), q4 (label 1); product 2: one positive, one label-0 query
    return pd.DataFrame({"product_id": [1, 1, 1, 1, 2, 2], "query_id": [1, 2, 3, 4, 5, 6],
                         "label": [2, 2, 0, 1, 2, 0]})


def test_pair_sampler_draws_positives_from_label_2_and_negatives_by_ratio():
    s = D.PairSampler(_relevance(), (2,), (0, 1), (1.0, 0.0), negatives=2, seed=0)
    assert len(s) == 3
    batches = list(s.epoch(batch_size=2))
    assert [len(b[0]) for b in batches] == [2, 1]
    for pids, pos, neg, mask in batches:
        for p, q, n, m in zip(pids, pos, neg, mask):
            assert (p, q) in {(1, 1), (1, 2), (2, 5)}
            assert m.sum() == 1 and n[m][0] == {1: 3, 2: 6}[p]  # label 1 has weight 0: only the label-0 query
    mixed = D.PairSampler(_relevance(), (2,), (0, 1), (0.25, 0.75), negatives=1, seed=0)
    drawn = [n[0, 0] for _ in range(400) for pids, _, n, m in mixed.epoch(1) if pids[0] == 1]
    share_label1 = np.mean(np.array(drawn) == 4)
    assert 0.65 < share_label1 < 0.85  # about 0.75
    with pytest.raises(ValueError, match="same length"):
        D.PairSampler(_relevance(), (2,), (0, 1), (1.0,), negatives=1, seed=0)


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
    assert _auc_2v0(np.array([2, 0, 1, 2, 0]), np.array([0.9, 0.1, 0.5, 0.8, 0.85])) == pytest.approx(0.75)


def test_linear_probe_separates_separable_classes():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8))
    y = rng.integers(3, size=300)
    x = (centres[y] + 0.1 * rng.normal(size=(300, 8))) * 0.01  # tiny scale, as unit-norm embeddings have
    assert (linear_probe(x[:200], y[:200].astype(str), x[200:]) == y[200:].astype(str)).mean() > 0.95


def test_world_judgments_agree_with_the_golden_labels(tiny_world):
    cat = D.load_catalog(tiny_world, 32, with_images=False)
    truth = read_table("relevance_truth", tiny_world / "hidden" / "relevance_truth").to_pandas()
    qids = truth.query_id.unique()[:20]
    judged = world_judgments(tiny_world, cat, qids)
    row_of = {int(p): i for i, p in enumerate(cat.product_ids)}
    for row in truth[truth.query_id.isin(qids)].itertuples():
        assert judged[int(row.query_id)].get(row_of[int(row.product_id)], 0) == row.true_label
    assert world_judgments(tiny_world / "raw", cat, qids) is None  # not a world: no judgments
