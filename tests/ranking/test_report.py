"""ranking.report: the metric keys of a split, the oracle, the comparison and gains tables, the figures."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ranking.report import (calibration_figure, close_figures, comparison_table, gains_figure, gains_table,
                            load_oracle, roc_figure, split_metrics)
from ranking.training_set import Split


def test_comparison_table_shows_mean_and_spread():
    rows = {"dcn": {"test/auc": 0.7, "test/auc_std": 0.01, "fit_seconds": 3.0},
            "gbdt": {"test/auc": 0.65, "fit_seconds": float("nan")}}
    assert comparison_table(rows, ["test/auc", "fit_seconds"]).splitlines() == [
        "| model | test/auc | fit_seconds |", "|---|---|---|",
        "| dcn | 0.7000 ± 0.0100 | 3.0000 |", "| gbdt | 0.6500 |  |"]


def test_gains_table_with_seed_spread_and_interval():
    rows = {"two_tower": {"test/auc_gain_vs_dcn": 0.02, "test/auc_gain_vs_dcn_std": 0.005,
                          "test/auc_gain_vs_dcn_ci_low": 0.01, "test/auc_gain_vs_dcn_ci_high": 0.03,
                          "test/auc_gain_vs_dcn/query_tail": -0.01}}
    assert gains_table(rows, "dcn", ("query_tail", "product_new")).splitlines() == [
        "| AUC gain vs dcn | test | query_tail | product_new |", "|---|---|---|---|",
        "| two_tower | +0.0200 ± 0.0050 [+0.0100, +0.0300] | -0.0100 |  |"]


def test_split_metrics_keys_overall_and_per_slice():
    y = np.array([0, 1, 0, 1, 1, 0])
    p = np.array([0.1, 0.8, 0.3, 0.6, 0.9, 0.2])
    split = Split("test", {"request_id": np.array([1, 1, 2, 2, 3, 3]), "user_id": np.array([7, 7, 8, 8, 9, 9]),
                           "__label__": y})
    out = split_metrics("test", y, p, split, {"first_half": np.arange(6) < 3}, min_count=3)
    assert out["test/auc"] == pytest.approx(1.0) and out["test/gauc_request"] == pytest.approx(1.0)
    assert out["test/auc/first_half"] == pytest.approx(1.0) and out["test/count/first_half"] == 3
    small = split_metrics("test", y, p, split, {"first_half": np.arange(6) < 3}, min_count=4)
    assert "test/auc/first_half" not in small and "test/auc" in small  # too small a slice gets no metrics


def test_load_oracle_joins_on_impression_id(tmp_path):
    folder = tmp_path / "hidden" / "impression_truth"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"impression_id": [30, 10, 20], "click_prob": [0.3, 0.1, 0.2]}), folder / "p.parquet")
    np.testing.assert_allclose(load_oracle(tmp_path, np.array([20, 30, 10])), [0.2, 0.3, 0.1])
    assert load_oracle(tmp_path, np.array([20, 40])) is None  # the truth does not cover these impressions
    assert load_oracle(tmp_path / "elsewhere", np.array([10])) is None


def test_figures_draw_and_close():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 0])
    p = np.linspace(0.05, 0.6, 8)
    rows = {"m": {"test/auc_gain_vs_dcn": 0.01, "test/auc_gain_vs_dcn_ci_low": 0.0,
                  "test/auc_gain_vs_dcn_ci_high": 0.02}}
    figures = [roc_figure({"m": (y, p)}, "roc"), calibration_figure(y, p, "calibration", n_bins=2),
               gains_figure(rows, "dcn", ("query_tail",), "gains")]
    plt = sys.modules["matplotlib.pyplot"]  # imported by the first figure, not by ranking.report itself
    assert all(f.axes for f in figures) and plt.get_fignums()
    close_figures()
    assert not plt.get_fignums()
