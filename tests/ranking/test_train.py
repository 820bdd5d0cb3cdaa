"""`python -m ranking.train` end to end on the synthetic training set, read back through MLflow's client API."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from mlflow import MlflowClient
from tests.helpers.training_sets import make_training_set, rewrite_split

from ranking import baselines
from ranking.train import main
from ranking.training_set import TrainingSetError
from tests.conftest import ROOT

ROOT_CONFIG = "experiments/configs/ranking/tiny.yaml"
ALL = ["base_rate", "historical_ctr", "logistic_regression", "gbdt", "dcn", "dashclip_two_tower"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("rank_train")
    make_training_set(root)
    return root / "synth"


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return MlflowClient(tracking_uri=uri)


def _config_path():
    return str(ROOT / ROOT_CONFIG)


def _runs(client, experiment="pctr-ranking"):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, "the experiment was not created"
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_end_to_end_mlflow_comparison_and_export(world, store, tmp_path, capsys):
    argv = ["--config", _config_path(), f"data={world}", f"export_dir={tmp_path / 'exports'}",
            f"checkpoint_dir={tmp_path / 'ckpt'}", f"models=[{', '.join(ALL)}]"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| dashclip_two_tower |" in printed and "(oracle)" in printed

    runs = _runs(store)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "tiny"
    assert parent.data.tags["embedding_version"] == "synth-v1"
    assert parent.data.params["train.batch_size"] == "512"
    children = {r.data.tags["model"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == set(ALL)
    for name, child in children.items():
        assert child.info.run_name == name and child.info.status == "FINISHED"
        m = child.data.metrics
        for key in ("train/auc", "valid/auc", "test/auc", "test/logloss", "test/ne", "test/calibration",
                    "test/gauc_request", "test/gauc_user", "test/oracle_auc", "test/oracle_gap_closed",
                    "test/auc/product_new", "test/auc/query_tail", "test/auc/position_1", "test/rela_impr_vs_dcn"):
            assert key in m, f"{name} lacks {key}"
        artifacts = {a.path for a in store.list_artifacts(child.info.run_id, "plots")}
        assert "plots/roc_test.png" in artifacts
    # per-epoch curves for the neural models
    history = store.get_metric_history(children["dcn"].info.run_id, "epoch/valid_auc")
    assert len(history) >= 2 and [h.step for h in history] == sorted(h.step for h in history)
    assert {a.path for a in store.list_artifacts(parent.info.run_id)} >= {"comparison.md", "config.yaml",
                                                                          "roc_test.png"}

    # The planted signal: only tower B can read cos(product, query); new products are in test only.
    auc = {name: child.data.metrics["test/auc"] for name, child in children.items()}
    assert auc["dashclip_two_tower"] > auc["dcn"] + 0.01
    assert auc["dashclip_two_tower"] > max(auc[b] for b in ALL if b not in ("dashclip_two_tower",))
    assert children["dashclip_two_tower"].data.metrics["test/oracle_gap_closed"] > 0.1

    # AUC gains over dcn: the exact difference of the logged AUCs (one seed), inside its bootstrap interval.
    two_tower = children["dashclip_two_tower"].data.metrics
    for suffix in ("", "/query_tail", "/product_new"):
        key = f"test/auc_gain_vs_dcn{suffix}"
        gain = two_tower[key]
        assert gain == pytest.approx(two_tower[f"test/auc{suffix}"] - children["dcn"].data.metrics[f"test/auc{suffix}"])
        assert two_tower[f"{key}_ci_low"] < gain < two_tower[f"{key}_ci_high"]
    assert not any(k.startswith("test/auc_gain_vs_dcn") for k in children["dcn"].data.metrics)
    # The default gain_slices include every product-history bucket (the cold-start curve) big enough to score.
    buckets = [k for k in two_tower if k.startswith("test/auc_gain_vs_dcn/product_history_") and k[-4:] != "_std"
               and "_ci_" not in k]
    assert buckets and all(f"test/auc/{k.split('/')[-1]}" in two_tower for k in buckets)
    assert "product_history_" in printed.split("| AUC gain vs dcn |")[1].splitlines()[0]
    assert {"gains.md", "gains_test.png"} <= {a.path for a in store.list_artifacts(parent.info.run_id)}
    assert "| AUC gain vs dcn |" in printed
    # The collapsed parent row of the runs table shows the comparison; its description is the table.
    for name, child in children.items():
        assert parent.data.metrics[f"{name}/test/auc"] == child.data.metrics["test/auc"]
    assert parent.data.metrics["dashclip_two_tower/test/auc_gain_vs_dcn"] == two_tower["test/auc_gain_vs_dcn"]
    assert "| dashclip_two_tower |" in parent.data.tags["mlflow.note.content"]
    assert "| AUC gain vs dcn |" in parent.data.tags["mlflow.note.content"]
    assert f"#/experiments/{parent.info.experiment_id}?workflowType=machine_learning" in printed

    # The export reloads and gives the same predictions.
    exported = children["dashclip_two_tower"].data
    assert exported.metrics["export/max_abs_diff"] <= 1e-5
    assert (tmp_path / "exports" / "dashclip_two_tower" / "1" / "saved_model.pb").exists()


def test_seeds_report_mean_and_spread(world, store, tmp_path):
    main(["--config", _config_path(), f"data={world}", "models=[base_rate, gbdt]", "export_model=''",
          "plots=false", "baseline=base_rate", "bootstrap_samples=0", "--seeds", "2"])
    runs = _runs(store)
    gbdt = [r for r in runs if r.data.tags.get("model") == "gbdt"][0]
    assert gbdt.data.params["seeds"] == "2"
    seeds = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == gbdt.info.run_id]
    assert sorted(r.data.tags["seed"] for r in seeds) == ["0", "1"]
    # The spread is the sample std (ddof=1) of the per-seed values each seed run logged.
    seed_aucs = [r.data.metrics["test/auc"] for r in seeds]
    assert gbdt.data.metrics["test/auc_std"] == pytest.approx(np.std(seed_aucs, ddof=1))
    tail = [r.data.metrics["test/auc/query_tail"] for r in seeds]
    assert gbdt.data.metrics["test/auc/query_tail_std"] == pytest.approx(abs(tail[0] - tail[1]) / 2 ** 0.5)
    mean = sum(seed_aucs) / 2
    assert gbdt.data.metrics["test/auc"] == pytest.approx(mean)
    # The gain over the (deterministic, once-fitted) baseline pairs each seed with its only run: AUC - 0.5.
    assert gbdt.data.metrics["test/auc_gain_vs_base_rate"] == pytest.approx(mean - 0.5)
    seed_std = abs(seed_aucs[0] - seed_aucs[1]) / 2 ** 0.5
    assert gbdt.data.metrics["test/auc_gain_vs_base_rate_std"] == pytest.approx(seed_std)
    assert "test/auc_gain_vs_base_rate_ci_low" not in gbdt.data.metrics  # bootstrap_samples=0


def test_failing_run_is_marked_failed(world, store, monkeypatch):
    def broken(self, data, seed=0):
        raise RuntimeError("boom")

    monkeypatch.setattr(baselines.HistoricalCTR, "fit", broken)
    with pytest.raises(RuntimeError, match="boom"):
        main(["--config", _config_path(), f"data={world}", "models=[base_rate, historical_ctr]",
              "export_model=''", "plots=false"])
    status = {r.info.run_name: r.info.status for r in _runs(store)}
    assert status == {"tiny": "FAILED", "base_rate": "FINISHED", "historical_ctr": "FAILED"}


def test_bad_input_fails_before_any_run(world, store, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(world / "training_sets" / "synth-v1", broken)
    rewrite_split(broken, "train", lambda t: t.drop_columns(["rating"]))
    with pytest.raises(TrainingSetError, match="rating"):
        main(["--config", _config_path(), f"training_set={broken}"])
    exp = store.get_experiment_by_name("pctr-ranking")
    assert exp is None or not store.search_runs([exp.experiment_id])
