"""ranking.preprocessing: vocabularies and dense statistics from the train split, by hand on a six-row table."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ranking.config import FeatureConfig
from ranking.preprocessing import fit_preprocessing
from ranking.training_set import FeatureSpec, Split

SPEC = FeatureSpec(int_ids=("user_id",), str_ids=("device",), dense=("price",), log_dense=(), ctr_pairs=(),
                   embeddings=(), embedding_dim=0, label="click")
TRAIN = Split("train", {"user_id": np.array([3, 3, 3, 5, 5, 7]),
                        "device": np.array([b"a", b"b", b"a", b"a", b"b", b"c"]),
                        "price": np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], np.float32),
                        "__label__": np.array([1, 0, 0, 1, 0, 0], np.int8)})


def test_vocabularies_most_frequent_first_above_min_count():
    prep = fit_preprocessing(TRAIN, SPEC, FeatureConfig(min_id_count=2), {})
    assert prep.vocabularies == {"user_id": [3, 5], "device": ["a", "b"]}  # 7 and "c" were seen once
    assert fit_preprocessing(TRAIN, SPEC, FeatureConfig(max_vocab=1), {}).vocabularies == {"user_id": [3],
                                                                                           "device": ["a"]}
    # An id feature never keeps an empty vocabulary: the most frequent value stays.
    assert fit_preprocessing(TRAIN, SPEC, FeatureConfig(min_id_count=9), {}).vocabularies["user_id"] == [3]


def test_dense_statistics_base_rate_and_impute_policy():
    prep = fit_preprocessing(TRAIN, SPEC, FeatureConfig(), {"price": 3.5})
    assert prep.dense_names == ("price",)
    assert prep.mean == [pytest.approx(3.5)] and prep.std == [pytest.approx(np.std(np.arange(1.0, 7.0)))]
    assert prep.base_rate == pytest.approx(2 / 6)
    assert prep.impute == {}  # nan_policy=fail: a NaN reaches the model as NaN
    impute = fit_preprocessing(TRAIN, SPEC, dataclasses.replace(FeatureConfig(), nan_policy="impute"),
                               {"price": 3.5})
    assert impute.impute == {"price": 3.5}
    constant = Split("train", {**TRAIN.columns, "price": np.full(6, 2.0, np.float32)})
    assert fit_preprocessing(constant, SPEC, FeatureConfig(), {}).std == [1.0]  # no division by zero
