"""Kill and resume for the data and serving entry points: each command is SIGKILLed at a chosen point (core.files'
fault points: mid-write = the staged output complete but not renamed; after a first output = right after a
rename inside a staged folder), checked for no partial output under the final name, rerun, and compared with an
uninterrupted run. Every computation here is deterministic on CPU, so every equality is exact (bytes of parquet
files, rows of the online store, SavedModel predictions, the A/B summary)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT
from tests.feature_store.store_world import CONFIG, VERSION, make_world, run
from tests.reliability.processes import entry_env, killed, visible

FS = ["-m", "feature_store"]
_CACHE: dict[str, object] = {}


def fs_args(command: str, data: Path, *overrides: str) -> list[str]:
    return [*FS, command, "--data", str(data), "--embeddings", VERSION, "--config", CONFIG, "progress=false",
            *overrides]


def files(folder: Path) -> dict[str, bytes]:
    """Every visible file under folder, by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(x.startswith(".") for x in p.relative_to(folder).parts)}


def online_rows(db: Path) -> dict[str, list]:
    """Every row of every table of a SQLite online store, sorted (the file's bytes depend on page layout)."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(con.execute(f'SELECT entity_key, feature_name, value, event_ts FROM "{t}"'))
                for t in sorted(tables)}


def fresh_build(world: Path, into: Path) -> Path:
    """The world's inputs built again elsewhere (a copied features/ folder would point at the original's
    paths: the rendered repo holds absolute ones)."""
    data = into / "tiny"
    shutil.copytree(world, data, ignore=shutil.ignore_patterns("features", "training_sets", "experiments"))
    run("build", data)
    return data


def served_world(tiny_world: Path, root: Path) -> dict:
    """Once per session: a world built, materialized and turned into training sets in this process (the
    uninterrupted runs), a dcn trained on it for one epoch with its MLflow run, and an export of that run."""
    if "world" in _CACHE:
        return _CACHE
    from ranking.serving.export import export_run
    from ranking.train import main as train

    data = make_world(tiny_world, root, keep_hidden=True)
    for command in ("build", "materialize", "training-set"):
        run(command, data)
    uri = f"sqlite:///{root}/mlflow.db"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        assert train(["--config", str(ROOT / "experiments/configs/ranking/tiny.yaml"),
                      f"training_set={data / 'training_sets' / VERSION}", "models=[dcn]", "export_model=",
                      f"checkpoint_dir={root / 'ckpt'}", "plots=false", "train.epochs=1"]) == 0
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("pctr-ranking").experiment_id])
        run_id = next(r.info.run_id for r in runs if r.data.tags.get("model") == "dcn")
        exported = export_run(run_id, root / "exports")
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    _CACHE.update(world=data, uri=uri, run_id=run_id, export=exported.path, root=root)
    return _CACHE


@pytest.fixture(scope="module")
def served(tiny_world, tmp_path_factory) -> dict:
    return served_world(tiny_world, tmp_path_factory.mktemp("served"))


@pytest.fixture
def env(served, tmp_path) -> dict[str, str]:
    return entry_env(tmp_path, MLFLOW_TRACKING_URI=served["uri"])


def predictions(version_dir: Path) -> np.ndarray:
    """serving_default's probabilities on the export's own warm-up rows (cached: the session's exports are
    never rewritten, versions only grow)."""
    if ("predictions", version_dir) not in _CACHE:
        _CACHE["predictions", version_dir] = _predictions(version_dir)
    return _CACHE["predictions", version_dir]


def _predictions(version_dir: Path) -> np.ndarray:
    from ranking.serving.contract import read_warmup
    from ranking.tf_legacy_keras import tf

    fn = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    (_, tensors), = [r for r in read_warmup(version_dir) if r[0] == "serving_default"]
    return fn(**{k: tf.constant(v) for k, v in tensors.items()})["probability"].numpy()


# ---------------------------------------------------------------------------------------------- feature store


def test_materialize_killed_mid_write_keeps_the_previous_online_store_then_resumes(served, tiny_world, env,
                                                                                    tmp_path):
    """SQLite online store: materialized to an earlier end first; the full materialize is killed with its
    staged online.db complete but not renamed: online.db still holds exactly the earlier state (before: the
    views were dropped and rewritten in place). The rerun's rows equal the uninterrupted run's."""
    data = fresh_build(served["world"], tmp_path)
    online = data / "features" / "online.db"
    run("materialize", data, "materialize_end=2026-01-06T00:00:00Z")
    earlier = online_rows(online)
    killed(fs_args("materialize", data), env, f"before-rename:{online}")
    assert online_rows(online) == earlier
    run("materialize", data)
    assert online_rows(online) == online_rows(served["world"] / "features" / "online.db") != earlier


def test_training_set_killed_after_its_first_part_shows_nothing_then_resumes(served, env, tmp_path):
    """Killed right after the first part file was renamed (inside the staged folder): no training set is
    visible under training_sets/; the rerun's files are byte-identical to the uninterrupted run's."""
    data = fresh_build(served["world"], tmp_path)
    killed(fs_args("training-set", data), env, "after-rename:*/training_sets/.*/train/part-00000.parquet")
    assert visible(data / "training_sets") == []
    run("training-set", data)
    expected = files(served["world"] / "training_sets" / VERSION)  # metadata.json names the data directory
    expected["metadata.json"] = expected["metadata.json"].replace(str(served["world"]).encode(), str(data).encode())
    assert files(data / "training_sets" / VERSION) == expected


# ---------------------------------------------------------------------------------------------- serving


def test_export_killed_mid_write_publishes_nothing_then_resumes(served, env, tmp_path, monkeypatch):
    """Killed with the SavedModel written in its staging folder, just before the rename that publishes it as
    version 1: no version folder is visible; the rerun removes the dead staging folder, publishes version 1, and
    its predictions equal the uninterrupted export's bit for bit."""
    out = tmp_path / "exports"
    args = ["-m", "ranking.serving.export", "--run", served["run_id"], "--out", str(out), "--no-progress"]
    killed(args, env, f"before-rename:{out}/dcn/1")
    assert visible(out / "dcn") == [] and len(list((out / "dcn").glob(".tmp-1-*"))) == 1
    from ranking.serving.contract import read_model_info, resolve_version_dir
    from ranking.serving.export import export_run

    with pytest.raises(ValueError, match="is not a SavedModel"):  # what a reader (TF Serving, batch_score) gets
        read_model_info(resolve_version_dir(out / "dcn"))

    monkeypatch.setenv("MLFLOW_TRACKING_URI", served["uri"])
    again = export_run(served["run_id"], out)
    assert again.path == out / "dcn" / "1" and [p.name for p in (out / "dcn").iterdir()] == ["1"]
    assert np.array_equal(predictions(again.path), predictions(served["export"]))


def test_batch_score_killed_before_its_rename_leaves_no_output_then_resumes(served, env, tmp_path):
    from ranking.serving import batch_score

    test = served["world"] / "training_sets" / VERSION / "test"
    reference, output = tmp_path / "reference.parquet", tmp_path / "scores.parquet"
    args = ["--model", str(served["export"]), "--input", str(test), "--keys", "impression_id", "--no-progress"]
    assert batch_score.main([*args, "--output", str(reference)]) == 0
    killed(["-m", "ranking.serving.batch_score", *args, "--output", str(output)], env,
           f"before-rename:{output}")
    assert visible(tmp_path) == ["reference.parquet"]
    assert batch_score.main([*args, "--output", str(output)]) == 0
    a, b = (pq.read_table(p).sort_by("impression_id") for p in (reference, output))
    assert a.num_rows == pq.read_metadata(test / "part-00000.parquet").num_rows and a.equals(b)


def test_ab_simulation_killed_after_its_log_keeps_the_previous_outputs_then_resumes(served, env, tmp_path):
    """A previous run (seed 1) is in <out>; a seed-0 run is killed right after its log was renamed: <out> is
    still the seed-1 run's, byte for byte (before: a new log beside the old truth.json and summary.json). The
    rerun's log, truth, interleaving and summary equal an uninterrupted seed-0 run's."""
    from experiments import ab_simulate

    out, reference = tmp_path / "ab", tmp_path / "reference"
    common = ["--config", str(ROOT / "experiments/configs/ab/tiny.yaml"), "--control", str(served["export"]),
              "--treatment", str(served["export"]), "--data", str(served["world"]), "notebook=''",
              "interleaving_notebook=''", "mlflow=false"]
    assert ab_simulate.main([*common, f"out={out}", "seed=1"]) == 0
    previous = files(out)
    killed(["-m", "experiments.ab_simulate", *common, f"out={out}", "seed=0"], env,
           "after-rename:*/log/part-00000.parquet")
    assert files(out) == previous and visible(tmp_path) == ["ab"]
    assert ab_simulate.main([*common, f"out={out}", "seed=0"]) == 0
    assert ab_simulate.main([*common, f"out={reference}", "seed=0"]) == 0
    expected = {k: v.replace(str(reference).encode(), str(out).encode()) for k, v in files(reference).items()}
    assert files(out) == expected != previous
