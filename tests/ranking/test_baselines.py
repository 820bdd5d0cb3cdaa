"""ranking.baselines against values computed by hand on tiny tables, and the shapes of the LR and GBDT inputs."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from tests.helpers.training_sets import make_training_set

from ranking.baselines import GBDT, BaseRate, HashedLogisticRegression, HistoricalCTR, make_baseline, required_columns
from ranking.config import BaselineConfig, FeatureConfig
from ranking.training_set import FeatureSpec, Split, TrainingSet, load_training_set

IDS = ("ad_id", "product_id", "query_id")
SPEC = FeatureSpec(int_ids=IDS, str_ids=(), dense=(), log_dense=(), ctr_pairs=(), embeddings=(), embedding_dim=0,
                   label="click")


def _split(name: str, labels, **columns) -> Split:
    return Split(name, {**{k: np.asarray(v) for k, v in columns.items()}, "__label__": np.asarray(labels, np.int8)})


# Ads 1 and 2 show product 10, ad 3 product 20; two queries. Base rate 3/6.
TRAIN = _split("train", [1, 0, 1, 1, 0, 0], ad_id=[1, 1, 2, 2, 3, 3], product_id=[10, 10, 10, 10, 20, 20],
               query_id=[5, 6, 5, 6, 5, 6])
TEST = _split("test", [0, 0, 0, 0], ad_id=[1, 3, 9, 8], product_id=[10, 20, 10, 30], query_id=[5, 6, 7, 5])
TINY = TrainingSet(Path("tiny"), {}, "v", SPEC, {"train": TRAIN, "valid": TRAIN, "test": TEST})


def test_base_rate_is_the_mean_train_label():
    p = BaseRate(BaselineConfig()).fit(TINY).predict(TEST)
    np.testing.assert_array_equal(p, np.full(4, 0.5))
    assert p.dtype == np.float64


def test_historical_ctr_backs_off_and_multiplies_by_hand():
    cfg = BaselineConfig(prior_strength=2.0, ctr_hierarchy=("ad_id", "product_id"), ctr_factors=("query_id",))
    # With m = 2 pseudo-impressions and base rate 1/2:
    #   product 10: (3 + 2 * 1/2) / (4 + 2) = 2/3    product 20: (0 + 1) / (2 + 2) = 1/4    unseen: 1/2
    #   ad 1: (1 + 2 * 2/3) / (2 + 2) = 7/12         ad 3: (0 + 2 * 1/4) / (2 + 2) = 1/8
    #   unseen ad 9 of product 10: (0 + 2 * 2/3) / 2 = 2/3;  unseen ad 8 of unseen product 30: 1/2
    #   query 5: (2 + 1) / (3 + 2) = 3/5, ratio 6/5;   query 6: (1 + 1) / 5 = 2/5, ratio 4/5;   unseen 7: ratio 1
    expected = [7 / 12 * 6 / 5, 1 / 8 * 4 / 5, 2 / 3 * 1, 1 / 2 * 6 / 5]
    np.testing.assert_allclose(HistoricalCTR(cfg).fit(TINY).predict(TEST), expected, rtol=1e-12)
    assert required_columns("historical_ctr", cfg) == ("ad_id", "product_id", "query_id")


def test_a_baseline_with_no_usable_features_raises():
    with pytest.raises(ValueError, match="historical_ctr: .*store_id.*features.id_features"):
        HistoricalCTR(BaselineConfig(ctr_hierarchy=("store_id",), ctr_factors=())).fit(TINY)
    nothing = TrainingSet(Path("none"), {}, "v", dataclasses.replace(SPEC, int_ids=()), TINY.splits)
    with pytest.raises(ValueError, match="logistic_regression: no features"):
        HashedLogisticRegression(BaselineConfig(lr_crosses=())).fit(nothing)
    with pytest.raises(ValueError, match="gbdt: no features"):
        GBDT(BaselineConfig(gbdt_categorical=())).fit(nothing)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = make_training_set(tmp_path_factory.mktemp("baselines"), n_requests=400)
    return load_training_set(folder, FeatureConfig(), use_embeddings=False)


def test_logistic_regression_design_shape_converges_and_predicts(synthetic):
    cfg = BaselineConfig(lr_hash_bits=12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # the fit must converge, not just stop
        model = make_baseline("logistic_regression", cfg).fit(synthetic, seed=0)
    test, spec = synthetic["test"], synthetic.spec
    x = model._design(test)
    n_hashed = len(spec.ids) + len(cfg.lr_crosses)  # one bucket per id and per cross
    n_dense = len(spec.dense) + len(spec.ctr_pairs)
    assert x.shape == (len(test), 2 ** 12 + n_dense)
    np.testing.assert_array_equal(np.diff(x.indptr), n_hashed + n_dense)  # every row: its buckets, then dense
    assert (x[:, :2 ** 12].data == 1.0).all()
    p = model.predict(test)
    assert p.shape == (len(test),) and p.dtype == np.float64 and ((p > 0) & (p < 1)).all()


def test_gbdt_matrix_shape_and_predictions(synthetic):
    cfg = BaselineConfig(gbdt_rounds=20, gbdt_leaves=7, gbdt_min_data_in_leaf=20)
    model = make_baseline("gbdt", cfg).fit(synthetic, seed=0)
    test, spec = synthetic["test"], synthetic.spec
    categorical = [c for c in cfg.gbdt_categorical if c in spec.ids]
    assert model.categorical == categorical
    assert model._matrix(test).shape == (len(test), len(spec.dense) + len(spec.ctr_pairs) + len(categorical))
    p = model.predict(test)
    assert p.shape == (len(test),) and p.dtype == np.float64 and ((p > 0) & (p < 1)).all()
