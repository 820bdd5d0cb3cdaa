"""ranking.distribute: two TensorFlow workers on localhost (MultiWorkerMirroredStrategy, one process each) train
like one process on the same global batch; the id table's gradient stays row-sparse across workers; `mirrored`
on one CPU trains exactly like `default`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tests.helpers.training_sets import make_training_set
from tests.ranking.multi_worker_run import HAND, train_and_predict

from core import metrics
from core.config import ConfigError, load_config
from ranking import distribute
from ranking.config import FeatureConfig, RankingConfig
from ranking.models import id_dropout_draws
from ranking.tf_legacy_keras import tf
from ranking.training_set import load_training_set
from tests.conftest import ROOT
from tests.helpers.ports import free_ports

# Two workers sum their gradients in another order than one process summing the whole batch, so float32 results
# can differ in the last bits, and Adam carries that through the 24 steps. Measured here: max |p_2 workers - p_1|
# of 4e-8 over the test rows, the same test AUC to 15 digits, epoch losses equal to 3e-8. 1e-5 on probabilities
# (and on AUC) leaves room for other thread counts and CPUs, and is far below what a double-counted gradient or a
# wrong shard gives (sharding the global batch twice, a bug met while building this, moved predictions by 8e-4).
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_training_set(tmp_path_factory.mktemp("distribute"), n_requests=500)


@pytest.fixture(scope="module")
def two_workers(world, tmp_path_factory):
    """Run tests/ranking/multi_worker_run.py as workers 0 and 1 of a localhost cluster; their .npz outputs."""
    root = tmp_path_factory.mktemp("cluster")
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_USE_LEGACY_KERAS": "1", "PYTHONHASHSEED": "0"}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.ranking.multi_worker_run", str(world), str(root / "ckpt"), str(root)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return root, [dict(np.load(root / f"worker{i}.npz")) for i in range(2)]


@pytest.fixture(scope="module")
def one_process(world, tmp_path_factory):
    """The reference: the same training in this process, default strategy."""
    return train_and_predict(world, tf.distribute.get_strategy(), tmp_path_factory.mktemp("single") / "ckpt")


def test_two_workers_sum_row_gradients_without_touching_other_rows(two_workers):
    _, results = two_workers
    summed = {1: np.array([2.0, 3.0]), 3: np.array([3.5, 3.0]), 4: np.array([2.0, 2.0])}  # row 3 from both workers
    lr_t = 0.5 * np.sqrt(1 - 0.999) / (1 - 0.9)  # lazy Adam's first step, bias-corrected
    for r in results:
        # every replica's (index, value) pairs, concatenated in replica order: nothing densified, nothing lost
        np.testing.assert_array_equal(r["indices"], HAND[0][0] + HAND[1][0])
        np.testing.assert_array_equal(r["values"], np.array(HAND[0][1] + HAND[1][1], np.float32))
        expected = np.ones((6, 2))
        for row, g in summed.items():
            expected[row] -= lr_t * 0.1 * g / (np.sqrt(0.001 * g * g) + 1e-7)
        np.testing.assert_allclose(r["table"], expected, rtol=1e-5)
        np.testing.assert_allclose(r["m"][[1, 3, 4]], 0.1 * np.stack(list(summed.values())), rtol=1e-6)
        untouched = [0, 2, 5]
        np.testing.assert_array_equal(r["table"][untouched], 1.0)  # exactly: no dense sweep of the table
        np.testing.assert_array_equal(r["m"][untouched], 0.0)
        np.testing.assert_array_equal(r["v"][untouched], 0.0)


def test_two_workers_train_like_one_process(two_workers, one_process, world):
    root, results = two_workers
    p_single, single = one_process
    test = load_training_set(world, FeatureConfig())["test"]
    assert [r["count"] for r in results] == [2, 2] and [bool(r["chief"]) for r in results] == [True, False]
    for r in results:
        # epoch 1 from scratch, then epoch 2 resumed from the chief's checkpoint by both workers
        assert list(r["resumed_from"]) == [0, 1] and list(r["epochs_run"]) == [1, 1]
        np.testing.assert_allclose(r["losses"], [h["epoch/train_loss"] for f in single for h in f.history],
                                   atol=TOLERANCE)
        assert np.max(np.abs(r["p"] - p_single)) < TOLERANCE
        assert metrics.auc(test.labels, r["p"]) == pytest.approx(metrics.auc(test.labels, p_single), abs=TOLERANCE)
    # only the chief wrote checkpoints, and its last state is after epoch 2
    assert json.loads((root / "ckpt" / "state" / "state.json").read_text())["epoch"] == 2
    assert sorted(p.name for p in (root / "ckpt").iterdir()) == ["best", "final", "state"]


def test_mirrored_on_one_device_trains_like_default(world, one_process, tmp_path):
    p_single, single = one_process
    p_mirrored, mirrored = train_and_predict(world, tf.distribute.MirroredStrategy(["/cpu:0"]), tmp_path / "ckpt")
    np.testing.assert_allclose(p_mirrored, p_single, atol=1e-6)
    assert [h["epoch/valid_auc"] for f in mirrored for h in f.history] == \
        pytest.approx([h["epoch/valid_auc"] for f in single for h in f.history], abs=1e-6)


def test_tf_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        distribute.check_tf_config({})
    with pytest.raises(ConfigError, match="not valid JSON"):
        distribute.check_tf_config({"TF_CONFIG": "{cluster"})
    bad_task = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 2}}
    with pytest.raises(ConfigError, match="'task' must name"):
        distribute.check_tf_config({"TF_CONFIG": json.dumps(bad_task)})
    with pytest.raises(ConfigError, match=r"job\(s\) ps are not used"):
        distribute.check_tf_config({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:2"]},
                                                             "task": {"type": "worker", "index": 0}})})


def test_shard_splits_a_global_batch_without_losing_rows():
    rows = np.arange(255)
    parts = [distribute.shard(rows, i, 2) for i in range(2)]
    assert [len(p) for p in parts] == [128, 127]
    np.testing.assert_array_equal(np.concatenate(parts), rows)


def test_strategy_key_is_checked_and_multi_worker_needs_tf_config(monkeypatch):
    with pytest.raises(ConfigError, match="train.strategy"):
        load_config(RankingConfig, ROOT / "experiments/configs/ranking/tiny.yaml", ["train.strategy=parameter_server"])
    cfg = load_config(RankingConfig, ROOT / "experiments/configs/ranking/multi_worker.yaml", [])
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs TF_CONFIG"):
        distribute.make_strategy(cfg.train.strategy)


def test_id_dropout_draws_follow_the_row_and_the_step_not_the_batch():
    ids = tf.constant(np.random.default_rng(0).integers(0, 10**6, (4000, 26)), tf.int64)
    whole = id_dropout_draws(ids, tf.constant(7, tf.int64), seed=3).numpy()
    # a row split off to another worker's share gets the same draws
    parts = [id_dropout_draws(ids[:1999], tf.constant(7, tf.int64), seed=3),
             id_dropout_draws(ids[1999:], tf.constant(7, tf.int64), seed=3)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert abs((whole < 0.05).mean() - 0.05) < 0.005 and 0 <= whole.min() and whole.max() < 1  # uniform
    next_step = id_dropout_draws(ids, tf.constant(8, tf.int64), seed=3).numpy()
    assert abs(np.corrcoef(whole.ravel(), next_step.ravel())[0, 1]) < 0.02  # fresh draws every step
