"""One TensorFlow worker of tests/ranking/test_distribute.py, started once per worker with its TF_CONFIG:

    TF_CONFIG=... python -m tests.ranking.multi_worker_run <training set> <checkpoint dir> <out dir>

It (1) sums hand-made IndexedSlices across the workers and applies them with the row-sparse optimizer, and
(2) trains `train_and_predict`'s model for one epoch, then resumes from that checkpoint for a second one, and
writes what the test compares to <out dir>/worker<i>.npz. The test runs `train_and_predict` itself in one process
(the default strategy) for the reference, so both sides train exactly the same model, data and global batch.
"""

from __future__ import annotations

import dataclasses
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402

from ranking import distribute  # noqa: E402
from ranking.config import FeatureConfig, NetConfig, TrainConfig  # noqa: E402
from ranking.fit import compile_model, fit_model, local_copy, predict  # noqa: E402
from ranking.models import build_model  # noqa: E402
from ranking.preprocessing import fit_preprocessing  # noqa: E402
from ranking.sparse_optim import RowSparseOptimizer  # noqa: E402
from ranking.tf_legacy_keras import tf  # noqa: E402
from ranking.training_set import load_training_set  # noqa: E402

# id dropout on (its draws depend on the step and the row, not on the worker); a global batch of 255 rows does
# not divide by 2 workers: they get 128 and 127 rows.
NET = NetConfig(id_embedding_dim=4, cross_layers=1, cross_projection_dim=8, deep_layers=(16,), content_projection_dim=8,
                head_layers=(8,), id_dropout=0.1)
TRAIN = TrainConfig(epochs=2, batch_size=255, eval_batch_size=4096, steps_per_execution=4)
SEED = 1
# Each worker's gradient of a [6, 2] table: row 1 twice on worker 0, row 3 on both workers.
HAND = {0: ([1, 3, 1], [[1.0, 2.0], [3.0, 4.0], [1.0, 1.0]]), 1: ([3, 4], [[0.5, -1.0], [2.0, 2.0]])}


def train_and_predict(folder, strategy, checkpoint_dir) -> tuple[np.ndarray, list]:
    """Test predictions after TRAIN.epochs epochs, trained as one epoch and then a resumed second one; and the
    two FitResults."""
    data = load_training_set(folder, FeatureConfig())
    prep = fit_preprocessing(data["train"], data.spec, FeatureConfig(), data.impute_values)
    results = []
    for epochs in range(1, TRAIN.epochs + 1):
        tf.keras.utils.set_random_seed(SEED)
        with strategy.scope():
            model = build_model("dashclip_two_tower", data.spec, prep, NET)
            compile_model(model, TRAIN)
        cfg = dataclasses.replace(TRAIN, epochs=epochs)
        results.append(fit_model(model, data, cfg, seed=SEED, checkpoint_dir=checkpoint_dir))
    return predict(local_copy(model), data["test"], data.spec), results


def sum_hand_made_gradients(strategy, index: int) -> dict[str, np.ndarray]:
    """HAND[index] summed over the workers by sum_row_gradients and applied by lazy Adam to a table of ones."""
    with strategy.scope():
        table = tf.Variable(np.ones((6, 2), np.float32))
        optimizer = RowSparseOptimizer("lazy_adam", table, 0.5)
    indices, values = HAND[index]

    @tf.function
    def step():
        def replica_fn():
            grad = distribute.sum_row_gradients(tf.IndexedSlices(tf.constant(values), tf.constant(indices),
                                                                 tf.constant([6, 2])), capacity=4)
            optimizer.apply(grad, table)
            return grad.indices, grad.values
        return strategy.run(replica_fn)

    gathered_indices, gathered_values = step()
    return {"indices": gathered_indices.numpy(), "values": gathered_values.numpy(), "table": table.numpy(),
            "m": optimizer.m.numpy(), "v": optimizer.v.numpy()}


def main(folder: str, checkpoint_dir: str, out: str) -> None:
    strategy = distribute.make_strategy("multi_worker")  # before any other TensorFlow op
    index, count = distribute.worker(strategy)
    sums = sum_hand_made_gradients(strategy, index)
    p, results = train_and_predict(folder, strategy, checkpoint_dir)
    np.savez(os.path.join(out, f"worker{index}.npz"), p=p, count=count, chief=distribute.is_chief(strategy),
             resumed_from=[r.resumed_from for r in results], epochs_run=[r.epochs_run for r in results],
             losses=[h["epoch/train_loss"] for r in results for h in r.history], **sums)


if __name__ == "__main__":
    main(*sys.argv[1:4])
