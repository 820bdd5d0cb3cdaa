"""NetConfig's peer-parity keys: the original DCN's vector cross layer and the configurable initialisers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core.config import ConfigError, load_config
from ranking.config import RankingConfig
from ranking.models import VectorCross, build_model
from ranking.pipeline import make_dataset
from ranking.tf_legacy_keras import tf


def test_vector_cross_is_x0_times_xl_dot_w_plus_b_plus_xl():
    rng = np.random.default_rng(0)
    x0, xl = rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=(5, 7)).astype(np.float32)
    layer = VectorCross()
    out = layer(tf.constant(x0), tf.constant(xl)).numpy()
    w, b = layer.w.numpy()[:, 0], layer.b.numpy()
    np.testing.assert_allclose(out, x0 * (xl @ w)[:, None] + b + xl, rtol=1e-5, atol=1e-6)
    assert layer.w.shape == (7, 1)  # D0 weights per layer, not D0 x D0


def test_vector_cross_model_and_initialisers(small_data, small_prep, small_net):
    net = dataclasses.replace(small_net, cross_type="vector", cross_layers=2, embedding_initializer="random_normal",
                              embedding_init_scale=1e-4, dense_initializer="he_normal")
    tf.keras.utils.set_random_seed(0)
    model = build_model("dcn", small_data.spec, small_prep, net)
    features, _ = next(iter(make_dataset(small_data["test"], small_data.spec, 32)))
    assert np.isfinite(model(features).numpy()).all()
    crosses = model.tower_a.crosses
    assert all(isinstance(c, VectorCross) for c in crosses) and len(crosses) == 2
    table = model.id_embedding.table.numpy()
    assert abs(table.std() - 1e-4) < 3e-5  # normal, std 1e-4 (DeepCTR's and FuxiCTR's default)


def test_the_config_keys_are_checked():
    cfg = load_config(RankingConfig, None, ["net.cross_type=vector", "net.dense_initializer=glorot_normal",
                                            "baselines.lr_c_grid=[0.1, 1.0]"])
    assert cfg.net.cross_type == "vector" and cfg.baselines.lr_c_grid == (0.1, 1.0)
    with pytest.raises(ConfigError, match="dense_initializer"):
        load_config(RankingConfig, None, ["net.dense_initializer=nope"])
    with pytest.raises(ConfigError):
        load_config(RankingConfig, None, ["net.cross_type=diagonal"])
