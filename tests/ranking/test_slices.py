"""ranking.slices: slice masks from train statistics and counts, product-history buckets."""

from __future__ import annotations

import re

import numpy as np

from ranking.config import SLICE_PATTERN, SliceConfig
from ranking.slices import expand_slices, history_buckets, slice_masks
from ranking.training_set import Split


def test_slices_from_train_statistics_and_counts():
    train = Split("train", {"query_id": np.array([1, 1, 1, 2]), "request_id": np.array([10, 11, 12, 13]),
                            "product_id": np.array([5, 5, 6, 6])})
    test = Split("test", {"query_id": np.array([1, 2, 3, 1]), "request_id": np.array([20, 21, 22, 23]),
                          "product_id": np.array([5, 7, 6, 8]), "position": np.array([1, 2, 1, 1], np.int8),
                          "history_count": np.array([0.0, 3.0, 0.0, 1.0]),
                          "product_impressions_7d": np.array([12.0, 0.0, 4.0, 0.0])})
    masks = slice_masks(train, test, SliceConfig(query_head_min_requests=3, query_tail_max_requests=1))
    assert masks["query_head"].tolist() == [True, False, False, True]  # query 1: 3 train requests
    assert masks["query_tail"].tolist() == [False, True, True, False]  # query 2: 1; query 3: unseen
    assert masks["product_new"].tolist() == [False, True, False, True]
    assert masks["product_cold"].tolist() == [False, True, False, True]  # no impressions in the 7-day count
    assert masks["user_history"].tolist() == [False, True, False, True]
    assert masks["position_1"].tolist() == [True, False, True, True]
    warm_up = slice_masks(train, test, SliceConfig(product_cold_max_impressions=4))
    assert warm_up["product_cold"].tolist() == [False, True, True, True]
    # Product-history buckets on the same count, upper edges (0, 4, 10): 0 | 1-4 | 5-10 | 11+.
    buckets = slice_masks(train, test, SliceConfig(product_history_edges=(0, 4, 10)))
    assert {k: v.tolist() for k, v in buckets.items() if k.startswith("product_history")} == {
        "product_history_0": [False, True, False, True], "product_history_1_4": [False, False, True, False],
        "product_history_5_10": [False, False, False, False], "product_history_11_plus": [True, False, False, False]}


def test_product_history_buckets_and_their_gain_slice_name():
    assert history_buckets((0, 10, 30)) == [("product_history_0", 0, 0), ("product_history_1_10", 1, 10),
                                            ("product_history_11_30", 11, 30), ("product_history_31_plus", 31, np.inf)]
    assert history_buckets((5,)) == [("product_history_0_5", 0, 5), ("product_history_6_plus", 6, np.inf)]
    cfg = SliceConfig(product_history_edges=(0, 10))
    assert expand_slices(("query_tail", "product_history", "product_history_0"), cfg) == (
        "query_tail", "product_history_0", "product_history_1_10", "product_history_11_plus")


def test_every_slice_name_matches_the_config_pattern():
    train = Split("train", {"query_id": np.array([1, 2]), "request_id": np.array([1, 2]),
                            "product_id": np.array([5, 6])})
    test = Split("test", {"query_id": np.array([1, 3]), "request_id": np.array([3, 4]),
                          "product_id": np.array([5, 7]), "position": np.array([1, 2], np.int8),
                          "history_count": np.array([0.0, 2.0]), "product_impressions_7d": np.array([0.0, 50.0])})
    names = list(slice_masks(train, test, SliceConfig()))
    assert len(names) == 15  # 3 query, 3 product, 5 history buckets, 2 user, 2 positions
    assert all(re.fullmatch(SLICE_PATTERN, name) for name in names), names
