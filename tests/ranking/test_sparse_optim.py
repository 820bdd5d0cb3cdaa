"""ranking.sparse_optim: each row-sparse optimizer against its update written out in numpy."""

from __future__ import annotations

import numpy as np
import pytest

from ranking.sparse_optim import RowSparseOptimizer
from ranking.tf_legacy_keras import tf

VALUES = np.array([[1.0, 2.0], [3.0, 4.0], [1.0, 1.0]], np.float32)  # row 1 twice: its gradients add up
INDICES = np.array([1, 3, 1])
SUMMED = {1: np.array([2.0, 3.0]), 3: np.array([3.0, 4.0])}
LR = 0.5


def _step(kind: str) -> np.ndarray:
    table = tf.Variable(np.ones((5, 2), np.float32))
    optimizer = RowSparseOptimizer(kind, table, LR)
    optimizer.apply(tf.IndexedSlices(tf.constant(VALUES), tf.constant(INDICES)), table)
    assert optimizer.iterations.numpy() == 1
    return table.numpy()


def _expected(update) -> np.ndarray:
    out = np.ones((5, 2))
    for row, g in SUMMED.items():
        out[row] -= update(g)
    return out


def test_sgd_adagrad_and_lazy_adam_update_only_the_touched_rows():
    np.testing.assert_allclose(_step("sgd"), _expected(lambda g: LR * g), rtol=1e-6)
    np.testing.assert_allclose(_step("adagrad"), _expected(lambda g: LR * g / np.sqrt(0.1 + g * g)), rtol=1e-6)
    beta_1, beta_2, eps = 0.9, 0.999, 1e-7
    lr_t = LR * np.sqrt(1 - beta_2) / (1 - beta_1)  # the bias-corrected rate of step 1
    adam = _expected(lambda g: lr_t * (1 - beta_1) * g / (np.sqrt((1 - beta_2) * g * g) + eps))
    np.testing.assert_allclose(_step("lazy_adam"), adam, rtol=1e-5)
    for rows in (_step("sgd"), _step("lazy_adam")):
        np.testing.assert_array_equal(rows[[0, 2, 4]], 1.0)  # untouched rows stay as they were


def test_a_dense_gradient_or_an_unknown_kind_is_refused():
    table = tf.Variable(np.ones((3, 2), np.float32))
    with pytest.raises(TypeError, match="only be read through tf.gather"):
        RowSparseOptimizer("sgd", table, LR).apply(tf.ones((3, 2)), table)
    with pytest.raises(ValueError, match="unknown table optimizer 'adam'"):
        RowSparseOptimizer("adam", table, LR)
