"""The A/B analysis against hand-computed delta-method, CUPED and chi-square values, and an A/A calibration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import tea_tasting as tt

from experiments.ab import analysis
from experiments.ab.log import LogError
from experiments.ab.moments import sample_moments
from experiments.ab.sensitivity import users_needed
from tests.experiments.ab.synthetic import synthetic_users

TOL = 1e-9


def four_users_per_arm() -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": np.arange(8),
        "arm": ["control"] * 4 + ["treatment"] * 4,
        "impressions": [10, 20, 5, 12, 9, 25, 6, 10],
        "clicks": [1, 3, 0, 2, 2, 4, 1, 3],
        "conversions": [0, 1, 0, 1, 1, 1, 0, 0],
        "pre_clicks": [1, 2, 0, 2, 1, 3, 1, 2],
        "pre_impressions": [8, 22, 6, 10, 10, 20, 7, 11],
    })


# ---- hand formulas (numpy only) ----

def ratio_and_variance(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """mean(x)/mean(y) and its delta-method variance (1/n)(var x/ȳ² - 2 x̄ cov/ȳ³ + x̄² var y/ȳ⁴)."""
    n, x_bar, y_bar = len(x), x.mean(), y.mean()
    cov = np.cov(x, y, ddof=1)[0, 1]
    var = (x.var(ddof=1) / y_bar**2 - 2 * x_bar * cov / y_bar**3 + x_bar**2 * y.var(ddof=1) / y_bar**4) / n
    return x_bar / y_bar, var


def welch_df(var_c: float, var_t: float, n_c: int, n_t: int) -> float:
    """Welch-Satterthwaite degrees of freedom from the variances of the two means."""
    return (var_c + var_t) ** 2 / (var_c**2 / (n_c - 1) + var_t**2 / (n_t - 1))


def welch_by_hand(r_c, var_c, r_t, var_t, n_c, n_t, alpha):
    """Absolute lift with its t-interval and p-value; relative lift with its log-scale t-interval."""
    lift, se = r_t - r_c, np.sqrt(var_c + var_t)
    q = scipy.stats.t.ppf(1 - alpha / 2, welch_df(var_c, var_t, n_c, n_t))
    log_var_c, log_var_t = var_c / r_c**2, var_t / r_t**2
    q_log = scipy.stats.t.ppf(1 - alpha / 2, welch_df(log_var_c, log_var_t, n_c, n_t))
    stretch = np.exp(q_log * np.sqrt(log_var_c + log_var_t))
    return {
        "control": r_c, "treatment": r_t, "abs_lift": lift, "abs_ci_low": lift - q * se,
        "abs_ci_high": lift + q * se, "rel_lift": r_t / r_c - 1, "rel_ci_low": r_t / r_c / stretch - 1,
        "rel_ci_high": r_t / r_c * stretch - 1, "t_statistic": lift / se,
        "p_value": 2 * scipy.stats.t.sf(abs(lift) / se, welch_df(var_c, var_t, n_c, n_t)),
    }


def lift_row(table: pd.DataFrame, metric: str, cuped: bool) -> pd.Series:
    return table.set_index(["metric", "cuped"]).loc[(metric, cuped)]


# ---- delta method ----

@pytest.mark.parametrize("alpha", [0.05, 0.2])
@pytest.mark.parametrize("metric, numerator", [("ctr", "clicks"), ("cvr", "conversions")])
def test_lifts_equal_the_hand_computed_delta_method(metric, numerator, alpha):
    users = four_users_per_arm()
    arms = [users[users["arm"] == arm] for arm in ("control", "treatment")]
    (r_c, var_c), (r_t, var_t) = (ratio_and_variance(a[numerator].to_numpy(float), a["impressions"].to_numpy(float))
                                  for a in arms)
    expected = welch_by_hand(r_c, var_c, r_t, var_t, 4, 4, alpha)

    row = lift_row(analysis.lift_table(users, alpha=alpha), metric, cuped=False)
    for column, value in expected.items():
        assert row[column] == pytest.approx(value, rel=TOL, abs=TOL), column


def test_analyse_returns_tea_tastings_result_for_both_metrics():
    result = analysis.analyse(four_users_per_arm())
    assert set(result) == {"ctr", "cvr"}
    assert result["ctr"].control == pytest.approx(6 / 47, rel=TOL)  # 6 clicks over 47 impressions
    assert result["cvr"].treatment == pytest.approx(2 / 50, rel=TOL)


def test_the_moments_equal_tea_tastings_own_reader():
    users = synthetic_users(np.random.default_rng(3), n_users=300)
    columns = ("clicks", "impressions", "pre_clicks")
    ours = sample_moments(users[list(columns)].to_numpy(), columns)
    theirs = tt.aggr.read_aggregates(users, None, has_count=True, mean_cols=columns, var_cols=columns,
                                     cov_cols=(("clicks", "impressions"), ("clicks", "pre_clicks"),
                                               ("impressions", "pre_clicks")))
    assert ours.count() == theirs.count() == 300
    for a in columns:
        assert ours.mean(a) == pytest.approx(theirs.mean(a), rel=1e-12)
        assert ours.var(a) == pytest.approx(theirs.var(a), rel=1e-12)
        for b in [b for b in columns if b != a]:
            assert ours.cov(a, b) == pytest.approx(theirs.cov(a, b), rel=1e-12)


# ---- CUPED ----

def cuped_users() -> pd.DataFrame:
    """Clicks are twice the pre-period clicks but for three users: the covariate explains most of the outcome."""
    pre_clicks = np.array([1, 3, 0, 2, 5, 1, 2, 4, 1, 3, 0, 6])
    pre_impressions = np.array([10, 20, 5, 12, 30, 8, 9, 25, 6, 10, 7, 28])
    return pd.DataFrame({
        "user_id": np.arange(12),
        "arm": ["control"] * 6 + ["treatment"] * 6,
        "impressions": pre_impressions,
        "clicks": 2 * pre_clicks + np.array([0, 1, 0, 0, 0, 0, 1, 0, 0, 2, 0, 0]),
        "conversions": [0, 1, 0, 1, 2, 0, 1, 0, 0, 2, 0, 3],
        "pre_clicks": pre_clicks,
        "pre_impressions": pre_impressions,
    })


def linearised(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Per-user linearisation of mean(num)/mean(den): its sample variance / n is the delta-method variance."""
    return (num - num.mean() / den.mean() * den) / den.mean()


def test_cuped_equals_the_hand_computed_adjustment_and_variance_reduction():
    users = cuped_users()
    x, y, px, py = (users[c].to_numpy(float) for c in ("clicks", "impressions", "pre_clicks", "pre_impressions"))
    theta = np.cov(linearised(x, y), linearised(px, py))[0, 1] / linearised(px, py).var(ddof=1)  # pooled arms
    pre_ctr = px.mean() / py.mean()
    by_arm = {}
    for arm in ("control", "treatment"):
        m = (users["arm"] == arm).to_numpy()
        residual = linearised(x[m], y[m]) - theta * linearised(px[m], py[m])  # (n_arm,)
        adjusted = x[m].mean() / y[m].mean() - theta * (px[m].mean() / py[m].mean() - pre_ctr)
        by_arm[arm] = (adjusted, residual.var(ddof=1) / m.sum(), linearised(x[m], y[m]).var(ddof=1) / m.sum())
    (r_c, var_c, plain_c), (r_t, var_t, plain_t) = by_arm["control"], by_arm["treatment"]
    expected = welch_by_hand(r_c, var_c, r_t, var_t, 6, 6, 0.05)
    factor = (var_c + var_t) / (plain_c + plain_t)  # Var(CUPED lift) / Var(plain lift)

    table = analysis.lift_table(users)
    cuped, plain = lift_row(table, "ctr", True), lift_row(table, "ctr", False)
    for column, value in expected.items():
        assert cuped[column] == pytest.approx(value, rel=TOL), column
    measured = (cuped["abs_lift"] / cuped["t_statistic"]) ** 2 / (plain["abs_lift"] / plain["t_statistic"]) ** 2
    assert measured == pytest.approx(factor, rel=TOL)
    assert factor < 0.2  # the covariate explains over 80% of the variance here


def test_cuped_needs_the_pre_period_columns():
    users = four_users_per_arm().drop(columns=["pre_clicks", "pre_impressions"])
    assert list(analysis.lift_table(users)["cuped"]) == [False, False]
    with pytest.raises(LogError) as error:
        analysis.analyse(users, cuped=True)
    assert error.value.column == "pre_clicks"


def test_an_unknown_arm_name_is_a_log_error():
    with pytest.raises(LogError, match="no users in arm 'new'") as error:
        analysis.analyse(four_users_per_arm(), treatment="new")
    assert error.value.column == "arm"


# ---- tables, SRM, power, bootstrap ----

def test_arm_summary_is_hand_checked():
    summary = analysis.arm_summary(four_users_per_arm())
    assert summary.loc["control", ["users", "impressions", "clicks", "conversions"]].tolist() == [4, 47, 6, 2]
    assert summary.loc["treatment", ["users", "impressions", "clicks", "conversions"]].tolist() == [4, 50, 10, 2]
    assert summary.loc["treatment", "ctr"] == pytest.approx(10 / 50)
    assert summary.loc["control", "cvr"] == pytest.approx(2 / 47)


@pytest.mark.parametrize("treatment_share, expected_counts", [(0.5, [500, 500]), (0.45, [550, 450])])
def test_srm_p_value_is_scipys_chi_square(treatment_share, expected_counts):
    users = pd.DataFrame({"user_id": np.arange(1000), "arm": ["control"] * 530 + ["treatment"] * 470})
    expected = scipy.stats.chisquare([530, 470], f_exp=expected_counts).pvalue
    assert analysis.srm(users, treatment_share=treatment_share) == pytest.approx(expected, rel=1e-12)


def test_power_matches_the_closed_form_normal_approximation():
    users = synthetic_users(np.random.default_rng(5), n_users=4000)
    ctr, var = ratio_and_variance(users["clicks"].to_numpy(float), users["impressions"].to_numpy(float))
    per_user_var = var * len(users)
    per_arm = users_needed(0.05 * ctr, 2 * per_user_var)  # sigma_c^2 + sigma_t^2 with equal variances

    needed = analysis.power(users, "ctr", rel_effect=0.05)
    assert needed.n_obs == pytest.approx(2 * per_arm, rel=0.01)  # t vs normal quantiles
    mde = analysis.power(users, "ctr", n_users=needed.n_obs)
    assert mde.rel_effect_size == pytest.approx(0.05, rel=1e-3)
    assert analysis.power(users, "ctr", rel_effect=0.05, n_users=needed.n_obs).power == pytest.approx(0.8, abs=1e-3)
    assert analysis.power(users, "ctr", n_users=needed.n_obs, cuped=True).rel_effect_size < mde.rel_effect_size


def test_bootstrap_agrees_with_the_delta_method():
    users = synthetic_users(np.random.default_rng(11), n_users=600, ctr_lift=0.2)
    boot = analysis.bootstrap_lift(users, "ctr", n_resamples=1000, seed=1)
    delta = lift_row(analysis.lift_table(users), "ctr", False)
    assert boot.rel_effect_size == pytest.approx(delta["rel_lift"], rel=1e-12)
    half_width = (delta["rel_ci_high"] - delta["rel_ci_low"]) / 2
    assert boot.rel_effect_size_ci_lower == pytest.approx(delta["rel_ci_low"], abs=0.25 * half_width)
    assert boot.rel_effect_size_ci_upper == pytest.approx(delta["rel_ci_high"], abs=0.25 * half_width)
    assert analysis.bootstrap_lift(users, "ctr", n_resamples=1000, seed=1) == boot  # seeded


# ---- calibration ----

N_AA = 300


@pytest.fixture(scope="module")
def aa_lifts() -> pd.DataFrame:
    """Lift tables of 300 seeded A/A experiments of 600 users each, stacked."""
    rng = np.random.default_rng(2024)
    return pd.concat([analysis.lift_table(synthetic_users(rng, n_users=600)) for _ in range(N_AA)])


@pytest.mark.parametrize("metric", ["ctr", "cvr"])
@pytest.mark.parametrize("cuped", [False, True])
def test_aa_tests_reject_about_5_percent(aa_lifts, metric, cuped):
    rows = aa_lifts[(aa_lifts["metric"] == metric) & (aa_lifts["cuped"] == cuped)]
    assert len(rows) == N_AA
    excludes_zero = (rows["abs_ci_low"] > 0) | (rows["abs_ci_high"] < 0)
    assert ((rows["p_value"] < 0.05) == excludes_zero).all()
    assert 0.02 <= excludes_zero.mean() <= 0.09
    # the bounds would catch intervals off by 2x: half as wide rejects far more, twice as wide almost never
    q = (rows["abs_ci_high"] - rows["abs_lift"]) / (rows["abs_lift"] / rows["t_statistic"])  # t quantile
    assert (rows["t_statistic"].abs() > q / 2).mean() > 0.09
    assert (rows["t_statistic"].abs() > q * 2).mean() < 0.02


def test_aa_data_is_clustered_so_an_impression_level_test_would_fail_the_bounds():
    rng = np.random.default_rng(2024)
    rejections = 0
    for _ in range(N_AA):
        users = synthetic_users(rng, n_users=600)
        treated = (users["arm"] == "treatment").to_numpy()
        clicks, impressions = users["clicks"].to_numpy(), users["impressions"].to_numpy()
        c = np.array([clicks[~treated].sum(), clicks[treated].sum()])  # (2,) control, treatment
        n = np.array([impressions[~treated].sum(), impressions[treated].sum()])
        pooled = c.sum() / n.sum()
        se = np.sqrt(pooled * (1 - pooled) * (1 / n).sum())  # two-proportion z-test: impressions independent
        rejections += abs(c[1] / n[1] - c[0] / n[0]) / se > 1.96
    assert rejections / N_AA > 0.09
