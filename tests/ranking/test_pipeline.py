"""ranking.pipeline: tf.data batches of a split, shuffled per epoch, every input in its own column and row."""

from __future__ import annotations

import numpy as np
import pytest
from tests.helpers.training_sets import make_training_set

from ranking.config import FeatureConfig
from ranking.pipeline import input_signature, make_dataset
from ranking.tf_legacy_keras import tf
from ranking.training_set import load_training_set


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_training_set(make_training_set(tmp_path_factory.mktemp("rank_pipeline"), n_requests=600),
                             FeatureConfig())


def test_dataset_batches_shuffle_each_epoch_and_cover_every_row(data):
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


def test_dataset_rows_carry_every_input_of_their_own_row(data):
    """Batches gather stacked id / dense blocks: each value must still land in its own column and row."""
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


def test_input_signature_dtypes_and_shapes(data):
    spec = data.spec
    assert input_signature(spec, "product_id") == tf.TensorSpec([None], tf.int64, name="product_id")
    assert input_signature(spec, "device") == tf.TensorSpec([None], tf.string, name="device")
    assert input_signature(spec, "price") == tf.TensorSpec([None], tf.float32, name="price")
    assert input_signature(spec, "query_embedding") == tf.TensorSpec([None, 16], tf.float32, name="query_embedding")
