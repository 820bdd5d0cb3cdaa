"""core.metrics against scikit-learn references and hand-computed values."""

import math
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from core import metrics
from tests.conftest import ROOT


def _random_data(n, seed, ties=False):
    rng = np.random.default_rng(seed)
    p = rng.random(n)
    y = (rng.random(n) < p).astype(np.int64)
    if ties:
        p = np.round(p, 1)  # 11 distinct scores: heavy ties, including ties across classes
    return y, p


# ----------------------------------------------------------------------------------------------------- AUC


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn(ties, seed):
    y, p = _random_data(5000, seed, ties)
    assert metrics.auc(y, p) == pytest.approx(roc_auc_score(y, p), rel=0, abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_auc_weighted_matches_sklearn(ties):
    y, p = _random_data(4000, 3, ties)
    w = np.random.default_rng(4).gamma(0.5, 2.0, size=len(y))
    w[:50] = 0.0  # zero weights must contribute nothing
    expected = roc_auc_score(y, p, sample_weight=w)
    assert metrics.auc(y, p, sample_weight=w) == pytest.approx(expected, rel=0, abs=1e-12)
    assert abs(metrics.auc(y, p, sample_weight=w) - metrics.auc(y, p)) > 1e-4  # weights actually change the answer


def test_auc_hand_example_with_ties():
    # positives at 0.8 and 0.5, negatives at 0.5 and 0.2: pairs (0.8>0.5)=1, (0.8>0.2)=1, (0.5=0.5)=0.5, (0.5>0.2)=1
    assert metrics.auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]) == pytest.approx(3.5 / 4, abs=1e-15)
    assert metrics.auc([True, False], [[0.3], [0.7]]) == 0.0  # bool labels and a Keras (n, 1) column


def test_auc_errors():
    with pytest.raises(ValueError, match="only one class"):
        metrics.auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only one class"):
        metrics.auc([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="only one class"):  # all negatives carry zero weight
        metrics.auc([1, 0, 1], [0.1, 0.2, 0.3], sample_weight=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="length mismatch"):
        metrics.auc([1, 0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="length mismatch"):
        metrics.auc([1, 0], [0.1, 0.2], sample_weight=[1.0])
    with pytest.raises(ValueError, match="NaN"):
        metrics.auc([1, 0], [0.1, float("nan")])
    with pytest.raises(ValueError, match="only 0 and 1"):
        metrics.auc([2, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="non-negative"):
        metrics.auc([1, 0], [0.1, 0.2], sample_weight=[1.0, -1.0])


# ------------------------------------------------------------------------------------- logloss, NE, calibration


def test_logloss_matches_sklearn():
    y, p = _random_data(3000, 5)
    p = np.clip(p, 1e-3, 1 - 1e-3)  # away from the clip, so eps conventions cannot differ
    assert metrics.logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-12)


def test_logloss_clips():
    assert metrics.logloss([1, 0], [0.0, 1.0], eps=1e-7) == pytest.approx(-math.log(1e-7), rel=1e-9)


def test_entropy_and_ne_hand_computed():
    y = [1, 0, 0, 0]
    p = [0.5, 0.1, 0.2, 0.1]
    ll = -(math.log(0.5) + math.log(0.9) + math.log(0.8) + math.log(0.9)) / 4  # 0.28175...
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # 0.56233...
    assert metrics.logloss(y, p) == pytest.approx(ll, rel=1e-12)
    assert metrics.entropy(0.25) == pytest.approx(h, rel=1e-12)
    assert metrics.normalized_entropy(y, p) == pytest.approx(ll / h, rel=1e-12)
    assert metrics.normalized_entropy(y, p) == pytest.approx(0.501041, abs=1e-6)
    assert metrics.entropy(0.0) == 0.0 and metrics.entropy(1.0) == 0.0
    # Predicting the base rate everywhere gives NE = 1 by construction.
    assert metrics.normalized_entropy(y, [0.25] * 4) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match="only one class"):
        metrics.normalized_entropy([0, 0], [0.1, 0.2])


def test_calibration_hand_computed():
    assert metrics.calibration([1, 0, 0, 1], [0.5, 0.1, 0.2, 0.6]) == pytest.approx(1.4 / 2, rel=1e-12)
    with pytest.raises(ValueError, match="without positives"):
        metrics.calibration([0, 0], [0.1, 0.2])


# ------------------------------------------------------------------------------------------------------ GAUC


def _gauc_reference(y, p, groups):
    num = den = 0.0
    for g in np.unique(groups):
        m = groups == g
        if len(np.unique(y[m])) < 2:
            continue
        num += m.sum() * roc_auc_score(y[m], p[m])
        den += m.sum()
    return num / den


@pytest.mark.parametrize("ties", [False, True])
def test_group_auc_matches_per_group_loop(ties):
    rng = np.random.default_rng(6)
    n_groups = 400
    groups = rng.integers(0, n_groups, size=6000)
    # group-level CTR shifts make GAUC differ from global AUC; some groups end up single-class
    shift = rng.normal(0, 1.5, n_groups)[groups]
    score = rng.normal(size=len(groups))
    y = (rng.random(len(groups)) < 1 / (1 + np.exp(-(score + shift)))).astype(int)
    p = 1 / (1 + np.exp(-score))
    if ties:
        p = np.round(p, 1)
    single_class = [g for g in np.unique(groups) if len(np.unique(y[groups == g])) < 2]
    assert len(single_class) > 10  # the exclusion rule is exercised
    expected = _gauc_reference(y, p, groups)
    assert metrics.group_auc(y, p, groups) == pytest.approx(expected, rel=0, abs=1e-12)
    assert abs(expected - metrics.auc(y, p)) > 0.01
    # the id type does not matter
    assert metrics.group_auc(y, p, np.char.add("req-", groups.astype(str))) == pytest.approx(expected, abs=1e-12)


def test_group_auc_hand_example_and_nan():
    # group a: AUC 1 over 3 rows; group b: AUC 0 over 2 rows; group c single-class (excluded)
    y = [1, 0, 0, 1, 0, 1, 1]
    p = [0.9, 0.1, 0.2, 0.3, 0.8, 0.5, 0.4]
    g = ["a", "a", "a", "b", "b", "c", "c"]
    assert metrics.group_auc(y, p, g) == pytest.approx((3 * 1.0 + 2 * 0.0) / 5, abs=1e-15)
    assert math.isnan(metrics.group_auc([1, 0, 1], [0.1, 0.2, 0.3], [1, 2, 3]))
    with pytest.raises(ValueError, match="length mismatch"):
        metrics.group_auc([1, 0], [0.1, 0.2], [1])


def test_group_auc_on_many_groups_matches_the_weighted_loop():
    # Speed belongs in benchmarks/; here the vectorised path must agree with the plain definition at scale.
    rng = np.random.default_rng(0)
    n = 200_000
    groups = rng.integers(0, 2_000, n)
    p = rng.random(n)
    y = (rng.random(n) < p).astype(np.int8)
    total, weight = 0.0, 0
    for g in np.unique(groups):
        m = groups == g
        if 0 < y[m].sum() < m.sum():
            total += m.sum() * roc_auc_score(y[m], p[m])
            weight += m.sum()
    assert metrics.group_auc(y, p, groups) == pytest.approx(total / weight, abs=1e-12)


# ------------------------------------------------------------------------------------------ relative metrics


def test_rela_impr_and_oracle_gap_hand_values():
    assert metrics.rela_impr(0.75, 0.70) == pytest.approx(25.0, rel=1e-12)  # (0.25 / 0.20 - 1) * 100
    assert metrics.rela_impr(0.65, 0.70) == pytest.approx(-25.0, rel=1e-12)
    assert metrics.oracle_gap_closed(0.72, 0.70, 0.80) == pytest.approx(0.2, rel=1e-12)
    assert metrics.oracle_gap_closed(0.80, 0.70, 0.80) == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError):
        metrics.rela_impr(0.7, 0.5)
    with pytest.raises(ValueError):
        metrics.oracle_gap_closed(0.7, 0.8, 0.8)


# --------------------------------------------------------------------------------------- evaluate and slices


def test_evaluate_keys_and_values():
    y, p = _random_data(2000, 7)
    req = np.arange(2000) // 20
    users = np.arange(2000) % 37
    out = metrics.evaluate(y, p)
    assert set(out) == {"count", "ctr", "auc", "logloss", "ne", "calibration"}
    full = metrics.evaluate(y, p, request_ids=req, user_ids=users)
    assert set(full) == set(out) | {"gauc_request", "gauc_user"}
    assert full["count"] == 2000.0 and full["ctr"] == pytest.approx(y.mean())
    assert full["auc"] == metrics.auc(y, p) and full["ne"] == metrics.normalized_entropy(y, p)
    assert full["logloss"] == metrics.logloss(y, p) and full["calibration"] == metrics.calibration(y, p)
    assert full["gauc_request"] == metrics.group_auc(y, p, req)
    assert full["gauc_user"] == metrics.group_auc(y, p, users)
    assert full["gauc_request"] != full["gauc_user"]
    assert all(isinstance(v, float) for v in full.values())


def test_slice_metrics_skips_small_and_one_class_slices():
    y, p = _random_data(3000, 8)
    req = np.arange(3000) // 10
    big = p > 0.3
    small = np.zeros(3000, bool)
    small[:50] = True
    slices = {"big": big, "small": small, "only_clicks": big & (y == 1), "no_clicks": big & (y == 0)}
    assert min(slices["only_clicks"].sum(), slices["no_clicks"].sum()) >= 100
    out = metrics.slice_metrics(y, p, slices, min_count=100, request_ids=req)
    assert set(out) == {"big"}
    assert out["big"] == metrics.evaluate(y[big], p[big], request_ids=req[big])
    assert "gauc_user" not in out["big"]
    assert set(metrics.slice_metrics(y, p, {"small": small}, min_count=10)) == {"small"}
    with pytest.raises(ValueError, match="boolean"):
        metrics.slice_metrics(y, p, {"idx": np.arange(10)})
    with pytest.raises(TypeError):
        metrics.slice_metrics(y, p, {"big": big}, request_id=req)  # misspelled id keyword is an error, not ignored


# ---------------------------------------------------------------------------------------- calibration curve


def test_calibration_curve_hand_example():
    mean_pred, frac_pos, counts = metrics.calibration_curve([0, 1, 0, 1], [0.1, 0.2, 0.8, 0.9], n_bins=2)
    np.testing.assert_allclose(mean_pred, [0.15, 0.85])
    np.testing.assert_allclose(frac_pos, [0.5, 0.5])
    np.testing.assert_array_equal(counts, [2, 2])


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
def test_calibration_curve_on_calibrated_data(strategy):
    rng = np.random.default_rng(9)
    n = 200_000
    p = rng.beta(2, 5, size=n)
    y = (rng.random(n) < p).astype(int)
    mean_pred, frac_pos, counts = metrics.calibration_curve(y, p, n_bins=10, strategy=strategy)
    assert counts.sum() == n and len(counts) == 10
    assert np.all(np.diff(mean_pred) > 0)
    se = np.sqrt(mean_pred * (1 - mean_pred) / counts)
    assert np.all(np.abs(frac_pos - mean_pred) < 4 * se)
    if strategy == "quantile":
        assert counts.min() > 0.95 * n / 10 and counts.max() < 1.05 * n / 10
    else:
        assert np.all((mean_pred >= np.arange(10) / 10) & (mean_pred < np.arange(1, 11) / 10))
    # a miscalibrated model (scores squared) is visibly off the diagonal
    mean_bad, frac_bad, counts_bad = metrics.calibration_curve(y, p**2, n_bins=10, strategy=strategy)
    assert np.max(np.abs(frac_bad - mean_bad) / np.sqrt(mean_bad * (1 - mean_bad) / counts_bad)) > 10


# -------------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_estimate_and_narrows():
    y_small, p_small = _random_data(2_000, 10)
    y_big, p_big = _random_data(50_000, 11)
    lo_s, hi_s = metrics.bootstrap_ci(metrics.auc, y_small, p_small, n_boot=200)
    lo_b, hi_b = metrics.bootstrap_ci(metrics.auc, y_big, p_big, n_boot=200)
    assert lo_s < metrics.auc(y_small, p_small) < hi_s
    assert lo_b < metrics.auc(y_big, p_big) < hi_b
    # width shrinks like 1/sqrt(n): 25x the data -> about 5x narrower
    assert (hi_b - lo_b) < (hi_s - lo_s) / 3
    assert metrics.bootstrap_ci(metrics.auc, y_small, p_small, seed=0) == (lo_s, hi_s)  # seeded


def test_bootstrap_ci_matches_normal_interval_for_a_mean():
    # for a mean the 95% percentile interval is about mean +- 1.96 * sqrt(m (1 - m) / n)
    y = (np.random.default_rng(13).random(10_000) < 0.3).astype(int)
    lo, hi = metrics.bootstrap_ci(lambda y_b, p_b: y_b.mean(), y, np.full(len(y), 0.3), n_boot=1000)
    m = y.mean()
    normal_width = 2 * 1.96 * math.sqrt(m * (1 - m) / len(y))
    assert 0.9 < (hi - lo) / normal_width < 1.1
    assert abs((lo + hi) / 2 - m) < 0.1 * normal_width


def test_bootstrap_ci_resamples_whole_groups():
    rng = np.random.default_rng(12)
    n_groups, size = 300, 10
    groups = np.repeat(np.arange(n_groups), size)
    p = np.repeat(rng.random(n_groups), size)  # one score per group, unique across groups
    y = (np.repeat(rng.random(n_groups), size) < p).astype(int)  # label shared by the whole group

    def mean_y_checking_groups(y_b, p_b):
        _, counts = np.unique(p_b, return_counts=True)
        assert np.all(counts % size == 0)  # a group is drawn whole or not at all
        return y_b.mean()

    lo_g, hi_g = metrics.bootstrap_ci(mean_y_checking_groups, y, p, groups=groups)
    lo_r, hi_r = metrics.bootstrap_ci(lambda y_b, p_b: y_b.mean(), y, p)
    assert lo_g < y.mean() < hi_g
    # perfectly correlated rows: grouped CI ~ sqrt(10) times wider than the naive row CI
    assert (hi_g - lo_g) > 2 * (hi_r - lo_r)


def test_auc_difference_ci_matches_sklearn_on_repeated_rows():
    # Reference: draw the same resamples (same seed, same groups), repeat the rows, score both with sklearn.
    rng = np.random.default_rng(21)
    n = 3_000
    groups = np.repeat(np.arange(n // 6), 6)
    y = (rng.random(n) < 0.2).astype(int)
    p_model = np.round(0.6 * y + rng.random(n), 2)  # rounded: ties, which the weighted AUC must handle too
    p_base = np.round(0.3 * y + rng.random(n), 2)
    est, lo, hi = metrics.auc_difference_ci(y, p_model, p_base, n_boot=60, seed=3, groups=groups)
    assert est == pytest.approx(roc_auc_score(y, p_model) - roc_auc_score(y, p_base), abs=1e-12)
    reference = []
    for times_drawn in metrics._bootstrap_counts(n, groups, 60, 3):
        idx = np.repeat(np.arange(n), times_drawn)
        reference.append(roc_auc_score(y[idx], p_model[idx]) - roc_auc_score(y[idx], p_base[idx]))
    assert (lo, hi) == pytest.approx(tuple(np.percentile(reference, [2.5, 97.5])), abs=1e-12)
    assert lo < est < hi and lo > 0  # a real gain: the interval excludes 0


def test_auc_difference_ci_is_paired():
    # Two nearly identical models: each AUC is uncertain (finite sample), their difference much less so.
    rng = np.random.default_rng(22)
    n = 20_000
    y = (rng.random(n) < 0.1).astype(int)
    p_base = 0.5 * y + rng.random(n)
    p_model = p_base + 0.05 * y + 0.02 * rng.random(n)
    est, lo, hi = metrics.auc_difference_ci(y, p_model, p_base, n_boot=200)
    lo_a, hi_a = metrics.bootstrap_ci(metrics.auc, y, p_model, n_boot=200)
    assert lo < est < hi and lo > 0
    assert (hi - lo) < (hi_a - lo_a) / 3
    assert metrics.auc_difference_ci(y, p_base, p_base, n_boot=50) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="p"):
        metrics.auc_difference_ci(y, p_model, p_base[:-1])


def test_auc_difference_cis_of_several_models_equal_each_model_alone():
    # The baseline's resample AUCs are shared, nothing else: every model's interval is the one it gets alone.
    rng = np.random.default_rng(23)
    n = 2_000
    groups = np.repeat(np.arange(n // 4), 4)
    y = (rng.random(n) < 0.15).astype(int)
    base = np.round(0.3 * y + rng.random(n), 2)
    models = {"a": np.round(0.6 * y + rng.random(n), 2), "b": 0.2 * y + rng.random(n), "same": base}
    together = metrics.auc_difference_cis(y, models, base, n_boot=40, seed=5, groups=groups)
    assert together == {name: metrics.auc_difference_ci(y, p, base, n_boot=40, seed=5, groups=groups)
                        for name, p in models.items()}
    assert together["same"] == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="p"):
        metrics.auc_difference_cis(y, {"short": models["a"][:-1]}, base)


def test_bootstrap_ci_drops_undefined_resamples():
    # with 3 rows about 1/3 of the resamples are one-class (auc raises): they are dropped, not fatal
    lo, hi = metrics.bootstrap_ci(metrics.auc, [1, 0, 0], [0.3, 0.2, 0.1], n_boot=200)
    assert (lo, hi) == (1.0, 1.0)
    with pytest.raises(ValueError, match="bootstrap resamples"):
        metrics.bootstrap_ci(lambda y_b, p_b: float("nan"), [1, 0, 0], [0.3, 0.2, 0.1], n_boot=50)


# ---------------------------------------------------------------------------------------------------- import


def test_module_import_is_light():
    code = "import sys, core.metrics; print(sorted(m for m in ('tensorflow', 'sklearn', 'torch') if m in sys.modules))"
    repo_root = ROOT
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root)
    assert out.stdout.strip() == "[]"
