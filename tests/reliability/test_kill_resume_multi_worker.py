"""Kill and resume of `ranking.train` under train.strategy=multi_worker: two TensorFlow workers on localhost, the
chief SIGKILLed right after its first checkpoint (epoch 0's, the after-rename fault point). The other worker is then
stuck in a collective with a dead peer; it is killed too, as a cluster manager restarts a whole job. Both are
started again with the same command and must end where a run that was never killed ends.

The reference is the same command in one process (train.strategy=default): bit for bit is out of reach, because two
workers add their gradients in another order than one process does. The tolerance is test_distribute's, 1e-5
(measured gaps there: 4e-8), far below what a lost or repeated epoch, a wrong shard or fresh optimizer slots give.
Dense dropout is off: its masks are drawn per worker (docs/scaling.md); id dropout is on, and keyed by the row.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers.ports import free_ports
from tests.reliability.processes import ROOT, run
from tests.reliability.test_kill_resume_training import (RANKING_CONFIG, RANKING_MODEL, _family, _history, _statuses,
                                                         _tf_checkpoint)

TOLERANCE = 1e-5
NAME = "kill-resume-multi-worker"
# The single-process kill test's config, with dense dropout off (its masks are drawn per worker) and two epochs.
OVERRIDES = [f"name={NAME}", "net.dropout=0.0", "train.epochs=2", "train.early_stopping_patience=2"]


def _cluster(args: list[str], env: dict[str, str], chief_env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """Workers 0 (the chief) and 1 of a fresh localhost cluster, both running `python <args>`."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        extra = (chief_env or {}) if index == 0 else {}
        procs.append(subprocess.Popen([sys.executable, *args], env={**env, "TF_CONFIG": json.dumps(tf_config), **extra},
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _outputs(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str, str]]:
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]
        return [(p.returncode, *out) for p, out in zip(procs, outputs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ranking_training_set, store_env):
    tmp = tmp_path_factory.mktemp("multi_worker")
    (tmp / "ranking.yaml").write_text(RANKING_CONFIG + f"training_set: {ranking_training_set}\n")
    env = store_env(tmp)

    def args(checkpoints: str, strategy: str) -> list[str]:
        return ["-m", "ranking.train", "--config", str(tmp / "ranking.yaml"), f"checkpoint_dir={tmp / checkpoints}",
                f"train.strategy={strategy}", *OVERRIDES]

    run(args("reference", "default"), env)
    cluster = args("cluster", "multi_worker")
    chief, worker = _cluster(cluster, env, {"DASHCLIP_KILL_AT": "after-rename:*/seed0/state"})
    chief.communicate(timeout=300)
    assert chief.returncode == -signal.SIGKILL, "the chief was not killed at its first checkpoint"
    worker.kill()  # waiting on its dead peer: the job is restarted whole
    worker.communicate()
    seed_dir = tmp / "cluster" / NAME / RANKING_MODEL / "seed0"
    seen = {"visible": sorted(p.name for p in seed_dir.iterdir() if not p.name.startswith(".")),
            "state": json.loads((seed_dir / "state" / "state.json").read_text())}
    (chief_rc, chief_out, chief_err), (worker_rc, _, worker_err) = _outputs(_cluster(cluster, env))
    assert chief_rc == 0, chief_err[-3000:]
    assert worker_rc == 0, worker_err[-3000:]
    return {"tmp": tmp, "seen": seen, "stdout": chief_out, "reference": tmp / "reference" / NAME / RANKING_MODEL /
            "seed0", "resumed": seed_dir}


@pytest.mark.slow
def test_a_killed_two_worker_run_resumes_to_what_one_process_trains(runs):
    assert runs["seen"]["visible"] == ["best", "state"] and runs["seen"]["state"]["epoch"] == 1
    assert "resumed from the checkpoint after epoch 1" in runs["stdout"]
    a, b = _tf_checkpoint(runs["reference"] / "final"), _tf_checkpoint(runs["resumed"] / "final")
    assert a.keys() == b.keys() and any("fused_id_table" in k for k in a)
    # Keras's running-loss tracker counts updates per replica (2 workers: twice the count); it is a progress-bar
    # average, not part of the model or its optimizer.
    model = [k for k in a if "/loss_tracker/" not in k]
    bad = {k: float(np.max(np.abs(b[k] - a[k]))) for k in model if not np.allclose(b[k], a[k], rtol=0, atol=TOLERANCE)}
    assert not bad, bad  # weights, Adam moments and step counts, calibration


@pytest.mark.slow
def test_the_restarted_chief_continues_the_killed_runs_to_finished(runs):
    family = _family(runs["tmp"], NAME)  # the reference's runs and the cluster's: two of each name
    assert _statuses(family) == {NAME: ["FINISHED", "FINISHED"], RANKING_MODEL: ["FINISHED", "FINISHED"]}
    reference, resumed = sorted(family[RANKING_MODEL], key=lambda r: r.data.tags.get("resumed_from_epoch", ""))
    assert resumed.data.tags["resumed_from_epoch"] == "1"
    steps = [[s for s, _ in _history(runs["tmp"], r.info.run_id, "epoch/valid_auc")] for r in (reference, resumed)]
    assert steps == [[0, 1], [0, 1]]  # epoch 0 logged once, from the checkpoint's history
    assert abs(resumed.data.metrics["test/auc"] - reference.data.metrics["test/auc"]) <= TOLERANCE
