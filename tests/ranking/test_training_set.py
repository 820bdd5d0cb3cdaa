"""ranking.training_set: reading a training set and the input checks that run before training."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from tests.helpers.training_sets import make_training_set, rewrite_split

from ranking.config import FeatureConfig
from ranking.training_set import TrainingSetError, first_rows, load_training_set, resolve_training_set

FC = FeatureConfig()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_training_set(tmp_path_factory.mktemp("rank_data"), n_requests=600)


@pytest.fixture
def copy(synth, tmp_path):
    """A private copy of the synthetic training set to break."""
    target = tmp_path / "ts"
    shutil.copytree(synth, target)
    return target


def test_reads_the_contract_and_discovers_counts(synth):
    data = load_training_set(synth, FC)
    spec = data.spec
    assert data.embedding_version == "synth-v1" and spec.embedding_dim == 16
    assert set(spec.str_ids) == {"device", "aisle", "brand"} and "product_id" in spec.int_ids
    # historical counts are found by name, not listed in the config
    assert {"product_impressions_7d", "product_clicks_7d", "query_clicks_7d"} <= set(spec.dense)
    assert ("product_ctr_7d", "product_clicks_7d", "product_impressions_7d") in spec.ctr_pairs
    train = data["train"]
    assert train.columns["product_embedding"].shape == (len(train), 16)
    assert train.columns["device"].dtype.kind == "S" and train.columns["price"].dtype == np.float32
    assert set(np.unique(train.labels)) == {0, 1}
    assert all(len(data[s]) > 0 for s in ("train", "valid", "test"))


def test_resolve_training_set_finds_the_only_version(synth):
    data_dir = synth.parent.parent
    assert resolve_training_set(data_dir) == synth
    with pytest.raises(TrainingSetError, match="no training set for embedding_version 'nope'"):
        resolve_training_set(data_dir, "nope")


def test_missing_feature_is_named(copy):
    rewrite_split(copy, "train", lambda t: t.drop_columns(["discount"]))
    with pytest.raises(TrainingSetError, match="discount"):
        load_training_set(copy, FC)


def test_missing_feature_in_a_later_split_is_named(copy):
    rewrite_split(copy, "test", lambda t: t.drop_columns(["brand"]))
    with pytest.raises(TrainingSetError, match=r"split 'test'.*brand"):
        load_training_set(copy, FC)


def _with_nan(t: pa.Table) -> pa.Table:
    price = t.column("price").to_numpy().copy()
    price[:3] = np.nan
    return t.set_column(t.schema.get_field_index("price"), "price", pa.array(price, pa.float32()))


def test_nan_in_dense_feature_fails_by_default(copy):
    rewrite_split(copy, "valid", _with_nan)
    with pytest.raises(TrainingSetError, match=r"split 'valid'.*'price' has 3 NaN.*nan_policy=impute"):
        load_training_set(copy, FC)


def test_nan_imputed_with_the_train_mean_when_configured(copy):
    rewrite_split(copy, "train", _with_nan)
    data = load_training_set(copy, dataclasses.replace(FC, nan_policy="impute"))
    price = data["train"].columns["price"]
    assert not np.isnan(price).any()
    assert data.nan_counts["train"] == {"price": 3}
    np.testing.assert_allclose(price[:3], data.impute_values["price"])
    np.testing.assert_allclose(data.impute_values["price"], np.mean(price[3:]), rtol=1e-5)


def test_wrong_embedding_width_is_named(copy):
    def narrow(t):
        col = t.column("query_embedding").combine_chunks()
        short = pa.array([v[:8] for v in col.to_pylist()], pa.list_(pa.float32()))
        return t.set_column(t.schema.get_field_index("query_embedding"), "query_embedding", short)

    rewrite_split(copy, "test", narrow)
    with pytest.raises(TrainingSetError, match=r"query_embedding.*width 16.*e\.g\. 8"):
        load_training_set(copy, FC)


def test_empty_split_is_an_error(copy):
    rewrite_split(copy, "valid", lambda t: t.slice(0, 0))
    with pytest.raises(TrainingSetError, match="split 'valid' is empty"):
        load_training_set(copy, FC)


def test_missing_split_folder_is_an_error(copy):
    shutil.rmtree(copy / "test")
    with pytest.raises(TrainingSetError, match="split 'test'"):
        load_training_set(copy, FC)


def test_labels_must_be_binary(copy):
    def bad(t):
        click = pc.multiply(t.column("click"), pa.scalar(2, pa.int8()))
        return t.set_column(t.schema.get_field_index("click"), "click", click)

    rewrite_split(copy, "train", bad)
    with pytest.raises(TrainingSetError, match="must be 0 or 1"):
        load_training_set(copy, FC)


def test_first_rows_are_the_split_s_first_rows_as_model_inputs(synth):
    data = load_training_set(synth, FC)
    spec, test = data.spec, data["test"]
    rows = first_rows(synth, "test", spec, 5)
    assert list(rows) == list(spec.ids) + list(spec.dense) + list(spec.embeddings)
    for name in spec.inputs:
        expected = test.columns[name][np.arange(5)] if name in spec.embeddings else test.columns[name][:5]
        np.testing.assert_array_equal(np.asarray(rows[name][np.arange(5)]), expected, err_msg=name)
