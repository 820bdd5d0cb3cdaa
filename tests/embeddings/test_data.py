"""DashCLIP inputs: catalog loading and its bad rows, the hold-out split, stage-2 inputs and pair sampling. No model
is trained here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from core.config import load_config
from embeddings.config import EmbeddingConfig
from embeddings.data import (PairSampler, load_catalog, load_queries, load_relevance, make_holdout, stage2_inputs,
                             train_window_end)
from feature_store.schema import read_table
from tests.embeddings.helpers import CONFIG
from tests.helpers.tables import rewrite_raw_table


def _products(world):
    return read_table("products", world / "raw" / "products").to_pandas()


def test_catalog_decodes_every_picture_in_product_order(tiny_world):
    cat = load_catalog(tiny_world, 32)
    products = _products(tiny_world)
    assert (cat.product_ids == products.product_id.to_numpy()).all() and cat.titles == products.title.tolist()
    assert cat.pixels.shape == (len(products), 3, 32, 32) and cat.skipped_images == []
    text_only = load_catalog(tiny_world, 32, with_images=False)
    assert text_only.pixels is None and len(text_only) == len(products)


def test_empty_title_names_the_product(world):
    products = _products(world)
    products.loc[7, "title"] = ""
    rewrite_raw_table(world, "products", products)
    with pytest.raises(ValueError, match=f"product_id {products.product_id[7]}: empty title"):
        load_catalog(world, 32)


@pytest.mark.parametrize("picture, problem", [(None, "missing image"), (b"", "empty image"),
                                              (b"GIF89a....", "not a PNG file"),
                                              (b"\x89PNG\r\n\x1a\n-truncated", "unreadable image")])
def test_bad_picture_names_the_product_unless_skipping_was_asked_for(world, picture, problem):
    products = _products(world)
    products["image"] = products.image.astype(object)
    products.at[3, "image"] = picture
    rewrite_raw_table(world, "products", products)
    with pytest.raises(ValueError, match=f"product_id {products.product_id[3]}: {problem}"):
        load_catalog(world, 32)
    # a text-only catalog does not read the pictures at all
    assert len(load_catalog(world, 32, with_images=False)) == len(products)
    cat = load_catalog(world, 32, skip_corrupt_images=True)
    assert cat.skipped_images == [int(products.product_id[3])] and len(cat) == len(products) - 1
    # relevance rows of a skipped product go with it; they are not "unknown products"
    rel = load_relevance(world, cat, load_queries(world))
    assert not rel.product_id.isin(cat.skipped_images).any()


def test_relevance_row_with_unknown_ids_is_named(world):
    rel = read_table("relevance", world / "raw" / "relevance").to_pandas()
    cat, queries = load_catalog(world, 32, with_images=False), load_queries(world)
    bad = pd.concat([rel, rel.iloc[:1].assign(query_id=987_654)], ignore_index=True)
    rewrite_raw_table(world, "relevance", bad)
    with pytest.raises(ValueError, match=f"unknown query_id; first: row {len(rel)} .query_id=987654"):
        load_relevance(world, cat, queries)
    bad = pd.concat([rel, rel.iloc[:1].assign(product_id=999_999)], ignore_index=True)
    rewrite_raw_table(world, "relevance", bad)
    with pytest.raises(ValueError, match="unknown product_id.*product_id=999999"):
        load_relevance(world, cat, queries)


def test_holdout_keeps_new_products_and_a_seeded_share_out(tiny_world):
    cat = load_catalog(tiny_world, 32, with_images=False)
    rel = load_relevance(tiny_world, cat, load_queries(tiny_world))
    end = train_window_end(tiny_world)
    new = (cat.created_ts >= end).to_numpy()
    assert new.any() and not rel.product_id.isin(cat.product_ids[new]).any()  # the simulator labels old ones only
    h = make_holdout(cat, rel, tiny_world, query_share=0.25, product_share=0.2, seed=3)
    assert not h.train_products[new].any()
    assert 0.1 < (~h.train_products[~new]).mean() < 0.3  # the seeded share of old products
    queries = rel.query_id.unique()
    assert 0.15 < len(h.heldout_queries) / len(queries) < 0.35 and set(h.heldout_queries) <= set(queries)
    again = make_holdout(cat, rel, tiny_world, query_share=0.25, product_share=0.2, seed=3)
    assert (again.train_products == h.train_products).all() and (again.heldout_queries == h.heldout_queries).all()
    other = make_holdout(cat, rel, tiny_world, query_share=0.25, product_share=0.2, seed=4)
    assert (other.heldout_queries.shape != h.heldout_queries.shape) or (other.heldout_queries != h.heldout_queries).any()


def _relevance():
    # product 1: positives q1, q2; negatives q3 (label 0), q4 (label 1); product 2: one positive, one label-0 query
    return pd.DataFrame({"product_id": [1, 1, 1, 1, 2, 2], "query_id": [1, 2, 3, 4, 5, 6],
                         "label": [2, 2, 0, 1, 2, 0]})


def test_pair_sampler_draws_positives_from_label_2_and_negatives_by_ratio():
    s = PairSampler(_relevance(), (2,), (0, 1), (1.0, 0.0), negatives=2, seed=0)
    assert len(s) == 3
    batches = list(s.epoch(batch_size=2))
    assert [len(b[0]) for b in batches] == [2, 1]
    for pids, pos, neg, mask, _, _ in batches:
        for p, q, n, m in zip(pids, pos, neg, mask):
            assert (p, q) in {(1, 1), (1, 2), (2, 5)}
            assert m.sum() == 1 and n[m][0] == {1: 3, 2: 6}[p]  # label 1 has weight 0: only the label-0 query
    mixed = PairSampler(_relevance(), (2,), (0, 1), (0.25, 0.75), negatives=1, seed=0)
    drawn = [b.neg_query_ids[0, 0] for _ in range(400) for b in mixed.epoch(1) if b.product_ids[0] == 1]
    share_label1 = np.mean(np.array(drawn) == 4)
    assert 0.65 < share_label1 < 0.85  # about 0.75
    with pytest.raises(ValueError, match="same length"):
        PairSampler(_relevance(), (2,), (0, 1), (1.0,), negatives=1, seed=0)


def test_pair_sampler_draws_negative_products_of_the_positive_query():
    # query 1 judged products 1 (label 2), 3 (label 0), 4 (label 1); query 2 judged product 2 (label 2) only
    rel = pd.DataFrame({"product_id": [1, 3, 4, 2], "query_id": [1, 1, 1, 2], "label": [2, 0, 1, 2]})
    s = PairSampler(rel, (2,), (0, 1), (1.0, 0.0), negatives=0, seed=0, negative_products=2)
    (b,) = list(s.epoch(batch_size=2))
    assert b.neg_query_ids.shape == (2, 0)
    for q, n, m in zip(b.pos_query_ids, b.neg_product_ids, b.neg_product_mask):
        assert list(n[m]) == {1: [3], 2: []}[q]  # label 1 has weight 0; query 2 has no negative product
    mixed = PairSampler(rel, (2,), (0, 1), (0.25, 0.75), negatives=0, seed=0, negative_products=1)
    drawn = [b.neg_product_ids[0, 0] for _ in range(400) for b in mixed.epoch(1) if b.pos_query_ids[0] == 1]
    assert 0.65 < np.mean(np.array(drawn) == 4) < 0.85  # product 4 (label 1) about 3 times in 4


def test_stage2_inputs_read_pictures_only_when_the_model_looks_at_them(tiny_world):
    cfg = load_config(EmbeddingConfig, CONFIG)
    catalog, queries, relevance, holdout = stage2_inputs(cfg, tiny_world)
    assert catalog.pixels is not None and catalog.pixels.shape[-1] == cfg.model.image_size
    assert len(queries) == read_table("queries", tiny_world / "raw" / "queries").num_rows
    assert len(relevance) == read_table("relevance", tiny_world / "raw" / "relevance").num_rows
    want = make_holdout(catalog, relevance, tiny_world, cfg.heldout_query_share, cfg.heldout_product_share, cfg.seed)
    assert (holdout.train_products == want.train_products).all()
    assert (holdout.heldout_queries == want.heldout_queries).all()
    for change in ({"product_input": "title"}, {"modalities": "text"}):
        model = dataclasses.replace(cfg.model, **change)
        titles_only, *_ = stage2_inputs(dataclasses.replace(cfg, model=model), tiny_world)
        assert titles_only.pixels is None and (titles_only.product_ids == catalog.product_ids).all()
