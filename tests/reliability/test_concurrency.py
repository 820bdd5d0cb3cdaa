"""Concurrent runs: two exports of the same model at once get distinct, complete versions; two feature-store
commands on one data directory at once both succeed, the second waiting on the store's lock, with the result of
a single run; readers never see a half-written export or training set (a killed writer leaves only hidden
staging entries)."""

from __future__ import annotations

import fcntl
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT
from tests.feature_store.store_world import VERSION, plain_context, run
from tests.reliability.processes import entry_env, visible
from tests.reliability.test_kill_resume_data import (files, fresh_build, fs_args, online_rows, predictions,
                                                     served_world)


@pytest.fixture(scope="module")
def served(tiny_world, tmp_path_factory) -> dict:
    return served_world(tiny_world, tmp_path_factory.mktemp("served"))


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def held(lock: Path) -> bool:
    """Whether another process holds the feature store's lock right now."""
    if not lock.exists():
        return False
    with open(lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the other command never got there"
        time.sleep(0.01)


def test_two_exports_of_one_model_at_once_get_distinct_complete_versions(served, tmp_path, monkeypatch):
    """A subprocess export and one in this process, the second started once the first is writing: both pick
    version 1 (no version is published yet) and race the rename; one publishes 1, the other finds it taken and
    publishes 2. Both are complete SavedModels whose predictions equal the model's export bit for bit."""
    from ranking.serving.export import export_run

    out = tmp_path / "exports"
    env = entry_env(tmp_path, MLFLOW_TRACKING_URI=served["uri"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", served["uri"])
    first = start(["-m", "ranking.serving.export", "--run", served["run_id"], "--out", str(out), "--no-progress"],
                  env)
    wait_for(lambda: any((out / "dcn").glob(".tmp-1-*")), first)
    mine = export_run(served["run_id"], out).path
    theirs = Path(finish(first)[0].strip().split(" to ")[1].split(";")[0])
    assert sorted([mine.name, theirs.name]) == ["1", "2"]
    assert sorted(p.name for p in (out / "dcn").iterdir()) == ["1", "2"]  # no staging folder left either
    expected = predictions(served["export"])
    for version in ("1", "2"):
        assert np.array_equal(predictions(out / "dcn" / version), expected)


def test_two_materializes_at_once_both_succeed_with_one_runs_result(served, tmp_path):
    """The second (in this process) starts while the first (a subprocess) holds the lock: it waits, then
    rewrites the store; the rows equal an uninterrupted run's. A reader opened before both (on the empty store
    build created) reads the new online.db once it is renamed into place, as a fresh reader does."""
    from feature_store.online import OnlineFeatures

    data = fresh_build(served["world"], tmp_path)
    early = OnlineFeatures(data, VERSION)
    rows = pq.read_table(served["world"] / "training_sets" / VERSION / "test").slice(0, 5).to_pandas()
    request = dict(user_id=int(rows.user_id[0]), query_id=int(rows.query_id[0]), product_ids=rows.product_id,
                   ad_ids=rows.ad_id, context=plain_context(rows.ts.iloc[-1]))
    first = start(fs_args("materialize", data), entry_env(tmp_path))
    wait_for(lambda: held(data / "features" / ".lock"), first)
    run("materialize", data)
    finish(first)
    assert online_rows(data / "features" / "online.db") == online_rows(served["world"] / "features" / "online.db")
    now, fresh = early.get(**request, as_arrow=True), OnlineFeatures(data, VERSION).get(**request, as_arrow=True)
    assert now.equals(fresh) and fresh.column("price").to_pylist() != [0.0] * 5


def test_two_training_sets_at_once_both_succeed_and_a_reader_sees_a_whole_one(served, tmp_path, capsys):
    """Two `training-set` runs on one data directory, a subprocess and one in this process (in a thread) started
    while the first holds the lock: the second waits (it says so on stderr) and both end with the same
    complete folder, byte-identical to an uninterrupted run's. While they run, a reader listing and reading
    training_sets/ sees nothing or a complete folder, never a part of one."""
    data = fresh_build(served["world"], tmp_path)
    first = start(fs_args("training-set", data), entry_env(tmp_path))
    wait_for(lambda: held(data / "features" / ".lock"), first)
    second = threading.Thread(target=run, args=("training-set", data))
    second.start()
    expected = files(served["world"] / "training_sets" / VERSION)
    expected["metadata.json"] = expected["metadata.json"].replace(str(served["world"]).encode(), str(data).encode())
    seen = []
    while first.poll() is None or second.is_alive():
        try:  # the folder may be renamed away between the listing and the read: a reader sees old or new
            if visible(data / "training_sets"):
                seen.append(files(data / "training_sets" / VERSION) == expected)
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    second.join()
    finish(first)
    assert "waiting for another `python -m feature_store` command" in capsys.readouterr().err
    assert files(data / "training_sets" / VERSION) == expected
    assert seen and all(seen)
