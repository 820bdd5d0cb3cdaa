"""Kill-and-resume of the training entry points (#17): the real commands as subprocesses, SIGKILLed at exact writes
(core.files' fault points), then run again; the final outputs must equal an uninterrupted run's, and no partial
output may ever be visible under its final name.

Each entry point gets one uninterrupted run (a module fixture shared by its tests) and a chain of the same command:
killed right after its first checkpoint (after-rename) and/or mid-write (before-rename: the staged folder is
complete but not yet under its name), then run to the end. Everything runs on the CPU with one thread and seeds
fixed, so the comparisons are exact (bit for bit), not tolerances.

    ranking.train            a two-tower model with id_dropout and dropout > 0, killed after epoch 0's checkpoint,
                             then mid-write of epoch 1's; MLflow runs of a killed invocation continued to FINISHED,
                             not left RUNNING; a second invocation on the same checkpoint folder refused; the
                             chain and the uninterrupted run share one MLflow store at once, each with its own runs
    embeddings.train 1 / 2   the tiny config, checkpoints every 2 steps: stage 1 killed mid-write of its second
                             checkpoint, stage 2 mid-write of its final one; its MLflow run continued; a second
                             training of the same checkpoint refused
    embeddings.precompute    killed before swapping in a new version: the old one stays whole
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.processes import ROOT, entry_env, killed, run, visible

# The subprocess tests share module fixtures that run the commands (about a minute each for ranking and embeddings);
# the faster tests of the same paths: tests/ranking/test_fit.py (bit-exact resume with dropout), tests/embeddings/
# test_train.py (both stages resumed in process), and the in-process lock and MLflow-record tests at the end.
SLOW = pytest.mark.slow
RANKING_NAME = "kill-resume"  # the uninterrupted run
CHAIN_NAME = "kill-resume-chain"  # the killed-and-rerun one, beside it in the same MLflow store
RANKING_MODEL = "dashclip_two_tower"
# The neural model with every random draw on (id dropout, dropout after each dense layer), three epochs run to the
# end (patience 3) so the chain has a first checkpoint, a middle one and a last one.
RANKING_CONFIG = f"""\
models: [{RANKING_MODEL}]
export_model: ""
plots: false
bootstrap_samples: 0
threads: 1
net: {{id_embedding_dim: 4, cross_layers: 1, cross_projection_dim: 8, deep_layers: [16], content_projection_dim: 8,
       head_layers: [8], dropout: 0.1, id_dropout: 0.1}}
train: {{epochs: 3, batch_size: 256, eval_batch_size: 4096, early_stopping_patience: 3, steps_per_execution: 4}}
"""
# What a resumed run measures differently from an uninterrupted one: time, and how many epochs this session ran.
TIMING = ("fit_seconds", "train_examples_per_s", "epochs_run", "epoch/seconds", "epoch/train_examples_per_s")


def _ranking_args(config: Path, checkpoints: Path, name: str) -> list[str]:
    return ["-m", "ranking.train", "--config", str(config), f"name={name}", f"checkpoint_dir={checkpoints}"]


def _seed_dir(checkpoints: Path, name: str) -> Path:
    return checkpoints / name / RANKING_MODEL / "seed0"


def _mlflow(tmp: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")


def _family(tmp: Path, name: str) -> dict[str, list]:
    """The parent runs named `name` in the ranking experiment of the store in `tmp` and their children, by run name
    (lists: each name must appear once)."""
    client = _mlflow(tmp)
    experiment = client.get_experiment_by_name("pctr-ranking")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    parents = {r.info.run_id for r in runs if r.info.run_name == name}
    out: dict[str, list] = {}
    for r in runs:
        if r.info.run_id in parents or r.data.tags.get("mlflow.parentRunId") in parents:
            out.setdefault(r.info.run_name, []).append(r)
    return out


def _statuses(family: dict[str, list]) -> dict[str, list[str]]:
    return {name: [r.info.status for r in runs] for name, runs in family.items()}


def _history(tmp: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in _mlflow(tmp).get_metric_history(run_id, key))


def _tf_checkpoint(folder: Path) -> dict[str, np.ndarray]:
    from ranking.tf_legacy_keras import tf

    reader = tf.train.load_checkpoint(str(folder / "ckpt"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended ({proc.returncode}) before {what}\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.02)


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    """Wait for a command started by _start; assert it exited 0 -> its stdout."""
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{err[-3000:]}"
    return out


def _refused_while_paused(first: subprocess.Popen, args: list[str], env: dict[str, str],
                          lock: Path) -> subprocess.CompletedProcess:
    """Once `first` holds `lock` (its pid written there), pause it (SIGSTOP: the overlap is then certain, not a
    race), run the same command a second time, which must exit 2, and let the first go on."""
    try:
        _wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid), first, "the lock")
        os.kill(first.pid, signal.SIGSTOP)
        try:
            return run(args, env, expect=2)
        finally:
            os.kill(first.pid, signal.SIGCONT)
    except BaseException:
        first.kill()
        first.communicate()
        raise


def _ranking_chain(args: list[str], env: dict[str, str], tmp: Path, seed_dir: Path) -> dict:
    """The command killed after its first checkpoint, killed again mid-write of the next one, then run to the end;
    what a reader saw at each kill."""
    def state() -> dict:
        return json.loads((seed_dir / "state" / "state.json").read_text())

    seen = {}
    killed(args, env, "after-rename:*/seed0/state")  # right after the checkpoint of epoch 0
    seen["after_first"] = {"visible": visible(seed_dir), "state": state(), "runs": _statuses(_family(tmp, CHAIN_NAME))}
    killed(args, env, "before-rename:*/seed0/state")  # the rerun's first checkpoint (epoch 1), staged, not renamed
    seen["mid_write"] = {"visible": visible(seed_dir), "state": state(),
                         "staged": sorted(p.name.split("-")[0] for p in seed_dir.iterdir() if p.name.startswith("."))}
    return {"tmp": tmp, "seed_dir": seed_dir, "seen": seen, "stdout": run(args, env).stdout}


@pytest.fixture(scope="module")
def ranking_runs(tmp_path_factory, ranking_training_set, store_env):
    """(the uninterrupted run, the killed-and-rerun chain), on the same training set and MLflow store. While the
    uninterrupted one holds its checkpoint folder, a second invocation of the same command is started (and must
    refuse); then the chain runs beside it under another name and checkpoint folder (two cores: the two take the
    time of one)."""
    tmp = tmp_path_factory.mktemp("ranking")
    config = tmp / "ranking.yaml"
    config.write_text(RANKING_CONFIG + f"training_set: {ranking_training_set}\n")
    env = store_env(tmp)
    args = _ranking_args(config, tmp / "reference", RANKING_NAME)
    first = _start(args, env)
    second = _refused_while_paused(first, args, env, tmp / "reference" / RANKING_NAME / ".lock")
    try:
        chain = _ranking_chain(_ranking_args(config, tmp / "resumed", CHAIN_NAME), env, tmp,
                               _seed_dir(tmp / "resumed", CHAIN_NAME))
    finally:
        _finish(first)
    reference = {"tmp": tmp, "seed_dir": _seed_dir(tmp / "reference", RANKING_NAME), "second": second,
                 "first_pid": first.pid}
    return reference, chain


@pytest.fixture(scope="module")
def ranking_reference(ranking_runs):
    return ranking_runs[0]


@pytest.fixture(scope="module")
def ranking_resumed(ranking_runs):
    return ranking_runs[1]


@SLOW
def test_ranking_train_resumed_twice_ends_bit_for_bit_where_an_uninterrupted_run_ends(ranking_reference,
                                                                                      ranking_resumed):
    ref, res = ranking_reference, ranking_resumed
    assert "resumed from the checkpoint after epoch 1" in res["stdout"]
    a, b = _tf_checkpoint(ref["seed_dir"] / "final"), _tf_checkpoint(res["seed_dir"] / "final")
    assert a.keys() == b.keys() and any("fused_id_table" in k for k in a)
    for key in a:  # weights, optimizer moments, calibration: exactly
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    (ref_child,) = _family(ref["tmp"], RANKING_NAME)[RANKING_MODEL]
    (res_child,) = _family(res["tmp"], CHAIN_NAME)[RANKING_MODEL]
    ref_metrics = {k: v for k, v in ref_child.data.metrics.items() if k not in TIMING}
    res_metrics = {k: v for k, v in res_child.data.metrics.items() if k not in TIMING}
    assert "test/auc" in ref_metrics and res_metrics == ref_metrics  # every split, slice and calibration metric
    for key in ("epoch/train_loss", "epoch/valid_auc", "epoch/valid_logloss", "epoch/learning_rate"):
        assert _history(res["tmp"], res_child.info.run_id, key) == _history(ref["tmp"], ref_child.info.run_id, key)


@SLOW
def test_a_killed_ranking_train_leaves_only_complete_checkpoints(ranking_resumed):
    after_first, mid_write = ranking_resumed["seen"]["after_first"], ranking_resumed["seen"]["mid_write"]
    assert after_first["visible"] == ["best", "state"] and after_first["state"]["epoch"] == 1
    # Killed before the rename of epoch 1's state: the reader still sees epoch 0's complete state, and the staged
    # folder only under its hidden name (removed by the next run: its pid is dead).
    assert mid_write["visible"] == ["best", "state"] and mid_write["state"]["epoch"] == 1
    assert mid_write["staged"] == [".state.tmp"]
    assert not any(p.name.startswith(".") for p in ranking_resumed["seed_dir"].iterdir())
    assert visible(ranking_resumed["seed_dir"]) == ["best", "final", "state"]


@SLOW
def test_a_killed_ranking_train_continues_its_mlflow_runs_to_finished(ranking_resumed):
    tmp = ranking_resumed["tmp"]
    # SIGKILL cannot be caught: the killed invocation left its runs RUNNING ...
    assert ranking_resumed["seen"]["after_first"]["runs"] == {CHAIN_NAME: ["RUNNING"], RANKING_MODEL: ["RUNNING"]}
    # ... and the reruns continued those very runs: one parent, one child, both FINISHED, with every epoch once
    # (epoch 0 was checkpointed but not logged before the first kill: logged from the checkpoint's history).
    runs = _family(tmp, CHAIN_NAME)
    assert _statuses(runs) == {CHAIN_NAME: ["FINISHED"], RANKING_MODEL: ["FINISHED"]}
    child = runs[RANKING_MODEL][0]
    assert [step for step, _ in _history(tmp, child.info.run_id, "epoch/valid_auc")] == [0, 1, 2]
    assert "test/auc" in child.data.metrics and child.data.tags["resumed_from_epoch"] == "1"
    assert "continuing the MLflow runs of the killed invocation" in ranking_resumed["stdout"]
    assert not (ranking_resumed["seed_dir"].parents[1] / "mlflow_runs.json").exists()


@SLOW
def test_a_second_ranking_train_on_the_same_checkpoint_folder_refuses(ranking_reference):
    second, folder = ranking_reference["second"], ranking_reference["seed_dir"].parents[1]
    # Before the lock it resumed the first one's half-trained checkpoint and wrote over its checkpoints.
    assert second.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint folder {folder} is in use by another ranking.train (pid {ranking_reference['first_pid']}); "
        f"wait for it to end, or give this run another name or checkpoint_dir")
    assert "Traceback" not in second.stderr
    # It opened no MLflow run; the first finished its own (one parent, one child).
    assert _statuses(_family(ranking_reference["tmp"], RANKING_NAME)) == {RANKING_NAME: ["FINISHED"],
                                                                         RANKING_MODEL: ["FINISHED"]}


@SLOW
def test_two_ranking_trains_side_by_side_in_one_store_each_end_with_their_own_runs(ranking_reference,
                                                                                   ranking_resumed):
    """The uninterrupted run and the chain shared the training set and the MLflow store at the same time (the chain
    started as soon as the first one, paused at its lock until then, went on: all its work still ahead): each has
    one parent and one child of its own, nothing else."""
    store = ranking_reference["tmp"]
    ours = _family(store, RANKING_NAME), _family(store, CHAIN_NAME)
    ids = [r.info.run_id for family in ours for runs in family.values() for r in runs]
    assert len(ids) == len(set(ids)) == 4
    experiment = _mlflow(store).get_experiment_by_name("pctr-ranking").experiment_id
    assert sorted(r.info.run_id for r in _mlflow(store).search_runs([experiment])) == sorted(ids)


# ---------------------------------------------------------------------------------------------------------------
# embeddings.train (stage 1, stage 2) and embeddings.precompute on the tiny world

EMBEDDINGS_CONFIG = ROOT / "experiments" / "configs" / "embeddings" / "tiny.yaml"  # 10 stage-1 steps, 6 stage-2


def _train_args(stage: int, world: Path, checkpoints: Path) -> list[str]:
    return ["-m", "embeddings.train", "--stage", str(stage), "--config", str(EMBEDDINGS_CONFIG), "--data", str(world),
            "--no-progress", f"checkpoints={checkpoints}", "checkpoint_every=2"]


def _precompute_args(world: Path, checkpoint: Path, out: Path) -> list[str]:
    return ["-m", "embeddings.precompute", "--data", str(world), "--checkpoint", str(checkpoint), "--out", str(out),
            "--version", "v1", "--no-progress"]


def _embedding_runs(tmp: Path) -> dict[str, list]:
    client = _mlflow(tmp)
    experiment = client.get_experiment_by_name("dashclip-embeddings")
    out: dict[str, list] = {}
    for r in client.search_runs([experiment.experiment_id]) if experiment else []:
        out.setdefault(r.info.run_name, []).append(r)
    return out


def _state_step(folder: Path) -> int:
    return json.loads((folder / "model_config.json").read_text())["step"]


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    """Every tensor bit for bit, and the JSON (config, history of every step's losses, validations) equal."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert wa[key].equal(wb[key]), key
    assert json.loads((a / "model_config.json").read_text()) == json.loads((b / "model_config.json").read_text())


def _assert_same_metrics(reference: Path, resumed: Path, run_name: str) -> None:
    """The resumed command's one MLflow run is FINISHED and holds the uninterrupted run's metrics (not its time)."""
    (ref,), (res,) = _embedding_runs(reference)[run_name], _embedding_runs(resumed)[run_name]
    assert res.info.status == "FINISHED"
    timeless = [{k: v for k, v in r.data.metrics.items() if k != "train/seconds"} for r in (ref, res)]
    assert "train/loss" in timeless[0] and timeless[1] == timeless[0]


def _tables(folder: Path) -> dict:
    import pyarrow.parquet as pq

    meta = json.loads((folder / "metadata.json").read_text())
    return {"products": pq.read_table(folder / "products"), "queries": pq.read_table(folder / "queries"),
            "metadata": meta}


def _stage1_chain(world: Path, tmp: Path, env: dict[str, str]) -> dict:
    """Killed with the checkpoint of step 4 staged, not yet renamed: the reader must see the complete one of step 2
    (the state right after the first checkpoint), the rerun resumes from it."""
    checkpoints = tmp / "checkpoints"
    args = _train_args(1, world, checkpoints)
    killed(args, env, "before-rename:*/stage1.state#2")
    seen = {"visible": visible(checkpoints), "step": _state_step(checkpoints / "stage1.state"),
            "runs": [r.info.status for r in _embedding_runs(tmp)["tiny/stage1"]]}
    done = run(args, env)
    return {"tmp": tmp, "checkpoints": checkpoints, "seen": seen, "stdout": done.stdout,
            "visible": visible(checkpoints)}


def _stage2_chain(world: Path, tmp: Path, env: dict[str, str], stage1: Path) -> dict:
    """Killed with the final checkpoint staged, not yet under its name: the rerun resumes from the state of step 4
    and writes it itself."""
    checkpoints = tmp / "checkpoints"
    shutil.copytree(stage1, checkpoints / "stage1")
    args = _train_args(2, world, checkpoints)
    killed(args, env, "before-rename:*/stage2")
    seen = {"visible": visible(checkpoints), "step": _state_step(checkpoints / "stage2.state")}
    done = run(args, env)
    return {"tmp": tmp, "checkpoints": checkpoints, "seen": seen, "stdout": done.stdout,
            "visible": visible(checkpoints)}


def _precompute_chain(world: Path, tmp: Path, env: dict[str, str], checkpoint: Path, earlier: Path) -> dict:
    """A version folder written by an earlier run is being replaced; killed before the swap, then run again."""
    out = tmp / "embeddings"
    args = _precompute_args(world, checkpoint, out)
    shutil.copytree(earlier, out)  # the version as the earlier run left it
    old = _tables(out)
    killed(args, env, f"before-rename:{out}")  # every table of the new write done, the folder not yet swapped in
    seen = {"visible": visible(tmp), "tables": _tables(out)}
    run(args, env)
    return {"old": old, "seen": seen, "new": _tables(out)}


@pytest.fixture(scope="module")
def embeddings_runs(tiny_world, tmp_path_factory, store_env):
    """The uninterrupted stage 1 (with a second training of the same checkpoint started while it holds it), stage 2
    and precompute, and beside them, in their own folders and stores, the killed-and-rerun chains (two cores: a
    chain runs while the reference pipeline does)."""
    world = tmp_path_factory.mktemp("embeddings_world") / "tiny"
    shutil.copytree(tiny_world, world)
    ref = tmp_path_factory.mktemp("embeddings_reference")
    env, checkpoints = store_env(ref), ref / "checkpoints"
    tmps = {k: tmp_path_factory.mktemp(f"embeddings_{k}") for k in ("stage1", "stage2", "precompute")}
    with ThreadPoolExecutor(1) as chains:  # one chain at a time, in order, beside the main thread's reference
        stage1 = chains.submit(_stage1_chain, world, tmps["stage1"], store_env(tmps["stage1"]))
        args = _train_args(1, world, checkpoints)
        first = _start(args, env)
        second = _refused_while_paused(first, args, env, checkpoints / ".stage1.lock")
        _finish(first)
        stage2 = chains.submit(_stage2_chain, world, tmps["stage2"], store_env(tmps["stage2"]), checkpoints / "stage1")
        run(_train_args(2, world, checkpoints), env)
        run(_precompute_args(world, checkpoints / "stage2", ref / "embeddings"), env)
        precompute = chains.submit(_precompute_chain, world, tmps["precompute"], entry_env(tmps["precompute"]),
                                   checkpoints / "stage2", ref / "embeddings")
        reference = {"tmp": ref, "checkpoints": checkpoints, "out": ref / "embeddings", "second": second,
                     "first_pid": first.pid}
        return {"reference": reference, "stage1": stage1.result(), "stage2": stage2.result(),
                "precompute": precompute.result()}


@SLOW
def test_stage1_killed_mid_write_of_its_second_checkpoint_resumes_bit_for_bit(embeddings_runs):
    ref, chain = embeddings_runs["reference"], embeddings_runs["stage1"]
    assert chain["seen"]["visible"] == ["stage1.state"] and chain["seen"]["step"] == 2
    assert chain["seen"]["runs"] == ["RUNNING"]  # SIGKILL cannot be caught
    assert "continuing MLflow run" in chain["stdout"]
    assert chain["visible"] == ["stage1", "stage1_training_curves.png"]  # the state folder went with the end
    _assert_same_checkpoint(ref["checkpoints"] / "stage1", chain["checkpoints"] / "stage1")
    _assert_same_metrics(ref["tmp"], chain["tmp"], "tiny/stage1")  # one run, continued to FINISHED


@SLOW
def test_stage2_killed_mid_write_of_its_final_checkpoint_resumes_bit_for_bit(embeddings_runs):
    ref, chain = embeddings_runs["reference"], embeddings_runs["stage2"]
    assert chain["seen"]["visible"] == ["stage1", "stage2.state"] and chain["seen"]["step"] == 4
    assert "continuing MLflow run" in chain["stdout"]
    assert chain["visible"] == ["stage1", "stage2", "stage2_training_curves.png"]
    _assert_same_checkpoint(ref["checkpoints"] / "stage2", chain["checkpoints"] / "stage2")
    _assert_same_metrics(ref["tmp"], chain["tmp"], "tiny/stage2")


@SLOW
def test_a_second_training_of_the_same_checkpoint_refuses(embeddings_runs):
    ref = embeddings_runs["reference"]
    second, checkpoints = ref["second"], ref["checkpoints"]
    assert second.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint {checkpoints / 'stage1'} (state {checkpoints / 'stage1'}.state) is in use by another "
        f"embeddings.train (pid {ref['first_pid']}); wait for it to end, or give this run another "
        f"--out-name or checkpoints folder")
    assert "Traceback" not in second.stderr
    # it opened no MLflow run; the first one finished its own
    assert [r.info.status for r in _embedding_runs(ref["tmp"])["tiny/stage1"]] == ["FINISHED"]


@SLOW
def test_precompute_killed_before_its_swap_leaves_the_old_version_whole(embeddings_runs):
    chain, reference = embeddings_runs["precompute"], _tables(embeddings_runs["reference"]["out"])
    old, kept, new = chain["old"], chain["seen"]["tables"], chain["new"]
    assert chain["seen"]["visible"] == ["embeddings"]
    # after the kill: the earlier version, whole (its created_at), not a mix
    assert kept["metadata"] == old["metadata"] and all(kept[n].equals(old[n]) for n in ("products", "queries"))
    assert new["metadata"]["created_at"] != old["metadata"]["created_at"]  # the rerun's own version ...
    for name in ("products", "queries"):
        assert new[name].num_rows > 0 and new[name].equals(reference[name]), name  # ... every vector bit for bit
    assert {k: v for k, v in new["metadata"].items() if k != "created_at"} == \
        {k: v for k, v in reference["metadata"].items() if k != "created_at"}


def test_a_rerun_with_another_config_marks_the_killed_runs_killed(tmp_path, mlflow_store_template, monkeypatch):
    """A record of killed runs is continued only by the same config and store; another config's rerun ends them
    KILLED (what they were: a live process would hold the folder's lock) and opens its own."""
    import mlflow

    from ranking.config import RankingConfig
    from ranking.train import RunRecord

    shutil.copyfile(mlflow_store_template, tmp_path / "mlflow.db")
    uri, before = f"sqlite:///{tmp_path / 'mlflow.db'}", mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient()
        experiment = client.create_experiment("pctr-ranking")
        parent, child = (client.create_run(experiment).info.run_id for _ in range(2))
        path = tmp_path / "mlflow_runs.json"
        same = RunRecord(path, RankingConfig())  # what the killed invocation recorded
        path.write_text(json.dumps({"key": same.key, "runs": {"": parent, "dcn": child}}))
        assert RunRecord(path, RankingConfig()).previous == {"": parent, "dcn": child}  # the same config continues
        assert RunRecord(path, RankingConfig(seed=1)).previous == {}  # another one does not ...
        assert [client.get_run(r).info.status for r in (parent, child)] == ["KILLED", "KILLED"]  # ... and ends them
    finally:
        mlflow.set_tracking_uri(before)


def test_one_checkpoint_folder_one_holder(tmp_path):
    """The locks of both entry points: a second holder is refused with the folder and the holder's pid (a lock is
    per open file, so this process counts as another holder too); released at the end of the block."""
    from embeddings.checkpoint import CheckpointInUse as EmbeddingsInUse
    from embeddings.checkpoint import exclusive
    from ranking.train import CheckpointInUse, exclusive_folder

    with exclusive_folder(tmp_path / "exp"):
        with pytest.raises(CheckpointInUse, match=f"checkpoint folder {tmp_path / 'exp'} is in use by another "
                                                  f"ranking.train \\(pid {os.getpid()}\\)"):
            with exclusive_folder(tmp_path / "exp"):
                pass
    with exclusive_folder(tmp_path / "exp"):  # free again
        pass
    with exclusive(tmp_path / "ck", "stage1"):
        with pytest.raises(EmbeddingsInUse, match=f"embeddings.train \\(pid {os.getpid()}\\)"):
            with exclusive(tmp_path / "ck", "stage1"):
                pass
        with exclusive(tmp_path / "ck", "stage2"):  # another checkpoint name: its own lock
            pass
    assert visible(tmp_path / "ck") == []  # the lock files are hidden
