"""The simulated A/B test (experiments/ab_simulate.py): ranking, assignment, the log contract, the hidden truth,
interleaving, batched scoring == OnlineRanker.score, and the calibration of the delta-method intervals against the
TRUE lift over many seeded repetitions on the tiny world."""

from __future__ import annotations

import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from experiments import ab_simulate as sim
from experiments.ab import analysis
from experiments.ab import log as ablog
from experiments.ab import report
from feature_store.schema import read_table

SLOTS = 4


@pytest.fixture(scope="module")
def candidates(tiny_world):
    return sim.impression_candidates(tiny_world)


@pytest.fixture(scope="module")
def positions(candidates):
    """control: the incumbent's logged order; treatment: the true attraction (an oracle ranker: a real lift)."""
    logged = -candidates.table.column("position").to_numpy().astype(float)
    return {"control": sim.shown_positions(candidates.request, logged, SLOTS),
            "treatment": sim.shown_positions(candidates.request, candidates.attraction, SLOTS)}


def test_shown_positions_rank_within_each_request():
    request = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.2])
    assert sim.shown_positions(request, scores, 2).tolist() == [0, 1, 2, 1, 2]  # ties keep candidate order


def test_truth_matches_the_world_click_model_at_logged_positions(candidates, tiny_world):
    """At the logged positions the true click model gives back the recorded click probability exactly."""
    logged = candidates.table.column("position").to_numpy().astype(np.int64)
    truth = pq.read_table(tiny_world / "hidden" / "impression_truth").to_pandas().set_index("impression_id")
    recorded = truth.loc[candidates.table.column("impression_id").to_numpy(), "click_prob"].to_numpy()
    assert np.allclose(sim.click_prob(candidates, logged), recorded, atol=1e-6)
    assert np.all((candidates.conv_prob > 0) & (candidates.conv_prob < 1))


def test_aa_has_zero_true_lift_and_ab_a_real_one(candidates, positions):
    aa = sim.true_lift(candidates, {"control": positions["control"], "treatment": positions["control"]})
    assert aa["true_rel_lift_ctr"] == 0 and aa["true_rel_lift_cvr"] == 0
    ab = sim.true_lift(candidates, positions)
    assert ab["true_rel_lift_ctr"] > 0.05  # the oracle ranker beats the incumbent
    assert ab["arms"]["control"]["impressions"] == ab["arms"]["treatment"]["impressions"]


def test_assignment_is_stable_salted_and_follows_the_share():
    users = np.arange(1, 20_001)
    a = sim.assign(users, "s1", 0.3)
    assert np.array_equal(a, sim.assign(users, "s1", 0.3))
    assert abs(a.mean() - 0.3) < 0.015
    assert (a != sim.assign(users, "s2", 0.3)).mean() > 0.3


def test_log_follows_the_declared_table_and_the_library(candidates, positions, tmp_path):
    log = sim.simulate_log(candidates, positions, "salt", seed=1)
    path = sim.write_log(log, tmp_path / "log")
    back = read_table("experiment_log", path)
    assert back.num_rows == candidates.n_requests
    assert {"query_segment", "user_history", "new_products"} <= set(back.column_names)
    users = ablog.user_table(back.to_pandas())
    assert set(users["arm"]) == {"control", "treatment"}
    assert analysis.srm(users) > 0.001
    fast = sim.fast_user_table(candidates, positions, "salt", np.random.default_rng(1))
    assert np.array_equal(fast["clicks"].to_numpy(), users["clicks"].to_numpy())


def test_new_products_segment_is_the_requests_with_a_candidate_created_in_the_experiment(candidates, tiny_world,
                                                                                          positions):
    """Per request, from the raw tables alone: does any candidate have created_ts >= the test start?"""
    import json

    import pandas as pd

    test_start = pd.Timestamp(json.loads((tiny_world / "world.json").read_text())["splits"]["test"][0])
    created = pq.read_table(tiny_world / "raw" / "products", columns=["product_id", "created_ts"]).to_pandas()
    rows = pd.DataFrame({"request_id": candidates.request_id[candidates.request],
                         "product_id": candidates.table.column("product_id").to_numpy()}).merge(created)
    expected = (rows["created_ts"] >= test_start).groupby(rows["request_id"]).any()
    assert np.array_equal(candidates.new_products == "some", expected.reindex(candidates.request_id).to_numpy())
    assert 0 < (candidates.new_products == "some").mean() < 1  # both segments occur on the tiny world
    log = sim.simulate_log(candidates, positions, "salt", seed=1)
    assert np.array_equal(log["new_products"].to_numpy(), candidates.new_products)  # arm-free: the same in both arms
    segments = report.segment_lifts(log)["segment"].tolist()
    assert {"new_products=some", "new_products=none", "query_segment=head"} <= set(segments)


def test_broken_split_is_caught_by_the_srm_test(candidates, positions):
    log = sim.simulate_log(candidates, positions, "salt", seed=1, broken_split=0.8)  # ~200 users: a big break
    users = ablog.user_table(log)
    assert analysis.srm(users) < 0.001


def test_interleaving_summary_prefers_the_oracle(candidates, positions):
    scores = {"control": -candidates.table.column("position").to_numpy().astype(float),
              "treatment": candidates.attraction}
    log = sim.simulate_log(candidates, positions, "salt", seed=2)
    out = sim.interleaving_summary(candidates, scores, log, SLOTS, seed=0, n_boot=20)
    assert out["preference"]["delta"] > 0
    assert out["users_needed"]["interleaving"] > 0 and np.isfinite(out["users_needed"]["ratio"])
    # every user with a test request is counted, those without credited clicks too (as in the A/B test)
    assert out["credit"]["users"] == len(np.unique(candidates.user_id)) > out["preference"]["n_units"]
    assert 0 < out["credit"]["contested_share"] < 1


def test_interleave_credits_only_contested_positions_and_identical_rankers_get_none(candidates):
    logged = -candidates.table.column("position").to_numpy().astype(float)
    same = {"control": logged, "treatment": logged}
    wins, clicks, imps, contested = sim.interleave(candidates, same, SLOTS, np.random.default_rng(0))
    assert clicks.sum() > 0 and wins.sum() == 0 and contested.sum() == 0
    assert np.array_equal(imps, np.minimum(np.bincount(candidates.request), SLOTS))
    oracle = {"control": logged, "treatment": candidates.attraction}
    wins, clicks, _, contested = sim.interleave(candidates, oracle, SLOTS, np.random.default_rng(0))
    assert np.all(wins.sum(axis=1) <= np.minimum(clicks, contested))


def test_calibration_coverage_of_the_true_lift_and_aa_rejection(candidates, positions):
    """The heart of the issue: over seeded repetitions (new split salt, new clicks), the 95% delta-method interval
    covers the TRUE lift about 95% of the time and A/A tests reject about 5%, with and without CUPED."""
    n = 200
    ab = sim.calibration_rates(sim.repetitions(candidates, positions, n, seed=1))
    aa_positions = {"control": positions["control"], "treatment": positions["control"]}
    aa = sim.calibration_rates(sim.repetitions(candidates, aa_positions, n, seed=2))
    for row in ab.itertuples():
        assert 0.88 <= row.coverage <= 1.0, row
    for row in aa.itertuples():
        assert row.rejection <= 0.12, row
    assert 0.01 <= aa["rejection"].mean() <= 0.10  # pooled over ctr/cvr x CUPED


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A small dcn SavedModel over the synthetic training set, exported as ranking.train exports (weights left at
    their seeded initialisation: equality of scores needs no training, and training would cost the test a minute)."""
    from tests.helpers.training_sets import make_training_set

    from ranking.config import FeatureConfig, NetConfig
    from ranking.models import build_model
    from ranking.preprocessing import fit_preprocessing
    from ranking.serving.contract import export_model
    from ranking.training_set import load_training_set

    root = tmp_path_factory.mktemp("ab_export")
    folder = make_training_set(root, n_requests=400)
    features = FeatureConfig()
    data = load_training_set(folder, features)
    prep = fit_preprocessing(data["train"], data.spec, features, data.impute_values)
    net = NetConfig(id_embedding_dim=8, deep_layers=(16,), cross_layers=1, cross_projection_dim=8)
    model = build_model("dcn", data.spec, prep, net)
    return export_model(model, root / "exports", "dcn", warmup=data["test"].columns), folder


def test_batched_scores_equal_online_ranker_per_request(export):
    """Scoring many requests per SavedModel call gives what OnlineRanker.score gives request by request."""
    from ranking.serving.online import OnlineRanker

    version, folder = export
    table = pq.read_table(folder / "test")
    request_ids, request = np.unique(table.column("request_id").to_numpy(), return_inverse=True)
    order = np.argsort(request, kind="stable")
    table, request = table.take(order), request[order]
    n = len(request)
    candidates = sim.Candidates(table=table, request=request, attraction=np.zeros(n), conv_prob=np.zeros(n),
                                position_decay=1.0, request_id=request_ids, user_id=request_ids,
                                query_id=request_ids, ts=np.zeros(len(request_ids), "datetime64[us]"),
                                query_segment=np.full(len(request_ids), "head"), pre=None)
    ranker = OnlineRanker(version)
    batched = sim.score(ranker, candidates, score_position=1, batch_rows=1000)
    assert batched.shape == (n,)
    rng = np.random.default_rng(0)
    for r in rng.choice(len(request_ids), size=20, replace=False):
        rows = np.flatnonzero(request == r)
        one = table.take(rows)
        features = sim.model_inputs(one, ranker.info["inputs"], 1)
        assert np.all(features["position"] == 1)
        assert np.abs(ranker.score(features) - batched[rows]).max() <= 1e-6


def test_each_analysed_experiment_is_an_mlflow_run_in_ab_tests(candidates, positions, tmp_path, monkeypatch):
    from pathlib import Path

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    log = sim.simulate_log(candidates, positions, "salt", seed=3)
    truth = sim.true_lift(candidates, positions)
    (tmp_path / "truth.json").write_text("{}")
    infos = {arm: {"model": model, "mlflow_run_id": f"run-{arm}", "mlflow_parent_run_id": "parent-1"}
             for arm, model in zip(sim.ARMS, ("dcn", "dashclip_two_tower"))}
    exports = {"control": Path("exports/dcn/3"), "treatment": Path("exports/dashclip_two_tower/7")}
    import subprocess
    import sys

    from core.tracking import owner_tags, setup_mlflow

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    client = MlflowClient(tracking_uri=uri)
    killed = client.create_run(setup_mlflow("ab-tests"),  # a simulation SIGKILLed inside its run
                               tags={**owner_tags(), "dashclip.pid": dead.stdout.strip()}).info.run_id
    run_id = sim.track(sim.AbSimConfig(), log, truth, None, infos, exports, None, tmp_path)
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "ab-tests"
    assert client.get_run(killed).info.status == "KILLED" and run.info.status == "FINISHED"
    assert run.data.tags["control.pctr_ranking_parent_run_id"] == "parent-1"
    assert run.data.params["treatment_model"] == "dashclip_two_tower/7"
    for key in ("ctr/rel_lift", "ctr/rel_ci_low", "ctr_cuped/rel_ci_high", "cvr/p_value", "srm_p_value",
                "true_rel_lift_ctr"):
        assert key in run.data.metrics, key
    assert {a.path for a in client.list_artifacts(run_id)} >= {"plots", "truth.json"}


def test_command_line_names_a_bad_model_or_world_folder_in_one_line(tiny_world, tmp_path):
    """Bad folders are named before the candidates load: one line, exit 2, no traceback."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    cases = [(["--data", str(tmp_path)], "--data", "no world.json"),
             (["--data", str(tiny_world), "--control", str(not_a_model)], "--control", "is not a SavedModel")]
    for args, flag, problem in cases:
        argv = ["--control", str(not_a_model), "--treatment", str(not_a_model), *args]
        done = subprocess.run([sys.executable, "-m", "experiments.ab_simulate", *argv], capture_output=True,
                              text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 2, done.stderr
        line = done.stderr.strip()
        assert "\n" not in line and line.startswith(f"error: {flag}") and problem in line, line


@pytest.mark.parametrize("overrides, message", [
    (["name=../../elsewhere"], "'name' must be a plain folder name"),  # the log would land outside <data>/experiments
    (["batch_rows=0"], "batch_rows=0"),
    (["sensitivity_boot=1"], "sensitivity_boot=1"),
    (["head_min_requests=-1"], "head_min_requests=-1"),
])
def test_config_refuses_names_that_leave_the_data_folder_and_sizes_below_one(overrides, message):
    from core.config import ConfigError, load_config
    from experiments.ab_simulate import AbSimConfig

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(AbSimConfig, None, overrides)
    load_config(AbSimConfig, None, ["name=../x", "out=/tmp/anywhere"])  # an explicit out may be anywhere
