"""ranking.models on tiny configs: shapes, what each tower sees, unseen ids, sparse updates, the FLOP count."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ranking.config import MODEL_KINDS
from ranking.fit import compile_model
from ranking.models import build_model, matmul_flops_per_example
from ranking.pipeline import make_dataset
from ranking.tf_legacy_keras import tf


def _batch(data, n=64, split="test"):
    features, labels = next(iter(make_dataset(data[split], data.spec, n)))
    return features, labels


@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_shapes_and_which_inputs_matter(kind, small_data, small_prep, small_net):
    tf.keras.utils.set_random_seed(0)
    model = build_model(kind, small_data.spec, small_prep, small_net)
    features, _ = _batch(small_data)
    with tf.GradientTape() as tape:
        tape.watch([features["query_embedding"], features["history_embedding"]])
        logits = model(features)
    assert logits.shape == (64,) and np.isfinite(logits.numpy()).all()
    grad_q, grad_h = tape.gradient(logits, [features["query_embedding"], features["history_embedding"]])
    uses_content = MODEL_KINDS[kind]["content"] != "none"
    assert (grad_q is not None and float(tf.reduce_max(tf.abs(grad_q))) > 0) == uses_content
    assert (grad_h is not None and float(tf.reduce_max(tf.abs(grad_h))) > 0) == MODEL_KINDS[kind]["history"]


def test_matmul_flops_match_a_hand_count(small_data, small_prep, small_net):
    """6 FLOPs per 2-D kernel weight (2 forward, 4 backward), counted by hand from the layer widths."""
    spec, net = small_data.spec, small_net
    d0 = len(spec.ids) * net.id_embedding_dim + len(spec.dense) + len(spec.ctr_pairs)  # tower A's input width
    rank, deep = net.cross_projection_dim, net.deep_layers[0]
    cross = d0 * rank + rank * d0  # one low-rank cross layer: U [d0, r] and V [r, d0]
    tower_a = cross + d0 * deep  # parallel: cross || one deep layer
    h_a = d0 + deep
    assert matmul_flops_per_example(build_model("dcn", spec, small_prep, net)) == 6 * (tower_a + h_a * 1)

    e, p, head = spec.embedding_dim, net.content_projection_dim, net.head_layers[0]
    h_b = 3 * p + 3  # embed_p, embed_q, embed_h, cos(p, q), cos(p, h), has_history
    tower_b = e * p + e * p  # the product and query projections (history shares the product's)
    two_tower = tower_a + tower_b + (h_a + h_b) * head + head * 1
    assert matmul_flops_per_example(build_model("dashclip_two_tower", spec, small_prep, net)) == 6 * two_tower


def test_unseen_ids_and_strings_go_to_oov(small_data, small_prep, small_net):
    model = build_model("dcn", small_data.spec, small_prep, small_net)
    features, _ = _batch(small_data, 8)
    features = dict(features)
    features["product_id"] = tf.constant([10**12] * 8, tf.int64)
    features["brand"] = tf.constant(["a brand nobody saw"] * 8)
    assert np.isfinite(model(features).numpy()).all()
    fused, _ = model.encoder(features)
    product_col = small_data.spec.ids.index("product_id")
    assert set(fused[:, product_col].numpy()) == {model.encoder.offsets[product_col]}  # the OOV row


def test_sparse_step_touches_only_the_batch_rows(small_data, small_prep, small_net, small_train):
    tf.keras.utils.set_random_seed(0)
    model = build_model("dashclip_two_tower", small_data.spec, small_prep, small_net)
    compile_model(model, small_train)
    features, labels = _batch(small_data, 32, "train")
    before = model.id_embedding.table.numpy().copy()
    model.train_step((features, labels))
    after = model.id_embedding.table.numpy()
    fused, _ = model.encoder(features)
    used = np.unique(fused.numpy())
    changed = np.flatnonzero(np.any(before != after, axis=1))
    assert len(changed) > 0 and set(changed) <= set(used)
    assert model.table_optimizer.iterations.numpy() == 1


def test_id_dropout_trains_the_oov_rows(small_data, small_prep, small_net, small_train):
    tf.keras.utils.set_random_seed(0)
    model = build_model("dcn", small_data.spec, small_prep, dataclasses.replace(small_net, id_dropout=0.5))
    compile_model(model, small_train)
    features, labels = _batch(small_data, 32, "train")
    oov_rows = np.array(model.encoder.offsets)
    before = model.id_embedding.table.numpy()[oov_rows].copy()
    model.train_step((features, labels))
    assert np.any(model.id_embedding.table.numpy()[oov_rows] != before, axis=1).all()
    # inference never drops ids
    np.testing.assert_array_equal(model(features), model(features))
