"""Fixtures of the ranking tests: a small synthetic training set, loaded once per module that asks for it."""

from __future__ import annotations

import pytest
from tests.helpers.training_sets import make_training_set

from ranking.config import FeatureConfig, NetConfig, TrainConfig
from ranking.preprocessing import fit_preprocessing
from ranking.training_set import load_training_set


@pytest.fixture
def small_net() -> NetConfig:
    """A network small enough to train in seconds, with every part present (cross, deep, tower B, head)."""
    return NetConfig(id_embedding_dim=4, cross_layers=1, cross_projection_dim=8, deep_layers=(16,),
                     content_projection_dim=8, head_layers=(8,), id_dropout=0.0)


@pytest.fixture
def small_train() -> TrainConfig:
    return TrainConfig(epochs=2, batch_size=256, eval_batch_size=4096)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """The synthetic training set of 500 requests, loaded with the default FeatureConfig."""
    folder = make_training_set(tmp_path_factory.mktemp("ranking_small"), n_requests=500)
    return load_training_set(folder, FeatureConfig())


@pytest.fixture(scope="module")
def small_prep(small_data):
    return fit_preprocessing(small_data["train"], small_data.spec, FeatureConfig(), small_data.impute_values)
