"""ranking.data: reading a training set, the input checks that run before training, the tf.data pipeline."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from tests.helpers.training_sets import make_training_set, rewrite_split

from core.config import ConfigError, load_config
from ranking.data import FeatureConfig, TrainingSetError, load_training_set, resolve_training_set

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


def test_unknown_config_key_is_named():
    from ranking.train import RankingConfig

    with pytest.raises(ConfigError, match="unknown key 'train.epoch'.*did you mean 'train.epochs'"):
        load_config(RankingConfig, None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="unknown model"):
        load_config(RankingConfig, None, ["models=[dcn, dcnn]"])
    with pytest.raises(ConfigError, match="features.nan_policy"):
        load_config(RankingConfig, None, ["features.nan_policy=drop"])
    with pytest.raises(ConfigError, match="gain_slices: unknown slice.*product_nwe"):
        load_config(RankingConfig, None, ["gain_slices=[query_tail, product_nwe]"])
    assert load_config(RankingConfig, None, ["gain_slices=[position_3, product_cold]"]).gain_slices == (
        "position_3", "product_cold")


def test_dataset_batches_shuffle_each_epoch_and_cover_every_row(synth):
    from ranking.data import make_dataset

    data = load_training_set(synth, FC)
    train = data["train"]
    ds = make_dataset(train, data.spec, 256, shuffle=True, seed=3)

    def epoch_ids():
        ids = []
        for features, labels in ds:
            assert features["product_embedding"].shape[1] == 16
            assert features["device"].dtype.name == "string" and labels.dtype.name == "float32"
            ids.append(features["product_id"].numpy())
        return np.concatenate(ids)

    first, second = epoch_ids(), epoch_ids()
    assert sorted(first) == sorted(train.columns["product_id"])  # every row exactly once
    assert not np.array_equal(first, second)  # a new permutation each epoch
    again = make_dataset(train, data.spec, 256, shuffle=True, seed=3)
    replay = np.concatenate([f["product_id"].numpy() for f, _ in again])
    np.testing.assert_array_equal(first, replay)  # (seed, epoch) decide the order: resumable


def test_dataset_rows_carry_every_input_of_their_own_row(synth):
    """Batches gather stacked id / dense blocks: each value must still land in its own column and row."""
    from ranking.data import make_dataset

    data = load_training_set(synth, FC)
    valid, spec = data["valid"], data.spec
    got = {name: [] for name in spec.inputs}
    labels = []
    for features, label in make_dataset(valid, spec, 100):  # not shuffled: rows in split order
        for name in spec.inputs:
            got[name].append(features[name].numpy())
        labels.append(label.numpy())
    for name in spec.inputs:
        expected = valid.columns[name]
        expected = np.asarray(expected[np.arange(len(valid))]) if name in spec.embeddings else expected
        np.testing.assert_array_equal(np.concatenate(got[name]), expected, err_msg=name)
        assert got[name][0].dtype == (np.float32 if name in spec.dense + spec.embeddings else
                                      np.int64 if name in spec.int_ids else object), name
    np.testing.assert_array_equal(np.concatenate(labels), valid.labels.astype(np.float32))
    assert spec.int_ids and spec.dense and spec.str_ids  # the fixture exercises every block
