"""Two-arm A/B analysis on a user table (one row per user, e.g. from `log.user_table`).

The statistics are tea-tasting's: the delta method for ratio metrics and CUPED for them (`tt.RatioOfMeans`),
Welch t-intervals and p-values, the log-scale interval of the relative lift, the sample-ratio test
(`tt.SampleRatio`), power and minimum detectable effect (`RatioOfMeans.solve_power`) and the bootstrap
(`tt.Bootstrap`). This module chooses the metrics, computes the per-arm sample moments tea-tasting reads and
turns the results into tidy tables.

Metrics (user-level sums; the user is the randomisation unit, so impressions are never treated as independent):

- ctr = sum(clicks) / sum(impressions)
- cvr = sum(conversions) / sum(impressions): conversions per impression, not per click. A new pCTR ranker
  changes which clicks happen, so conversions/clicks compares rates over different click populations (a
  post-treatment selection); per impression both arms share the denominator's meaning. The post-click rate of
  an arm is cvr / ctr in `arm_summary`.

CUPED (`cuped=True`) uses each user's pre-period CTR (pre_clicks / pre_impressions) as the covariate of every
metric; tea-tasting estimates the coefficient on both arms pooled, so a covariate unrelated to a metric costs
almost nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import tea_tasting as tt
from tea_tasting.aggr import Aggregates
from tea_tasting.experiment import ExperimentResult
from tea_tasting.metrics.mean import MeanPowerResult
from tea_tasting.metrics.resampling import BootstrapResult

from experiments.ab.log import PRE_PERIOD, LogError
from experiments.ab.moments import sample_moments

METRICS: dict[str, tuple[str, str]] = {  # name -> (numerator, denominator) columns of the user table
    "ctr": ("clicks", "impressions"),
    "cvr": ("conversions", "impressions"),
}
CUPED_COVARIATE: tuple[str, str] = PRE_PERIOD  # (pre_clicks, pre_impressions): the pre-period CTR

LIFT_COLUMNS = {  # tea-tasting MeanResult field -> lift table column
    "control": "control",
    "treatment": "treatment",
    "effect_size": "abs_lift",
    "effect_size_ci_lower": "abs_ci_low",
    "effect_size_ci_upper": "abs_ci_high",
    "rel_effect_size": "rel_lift",
    "rel_effect_size_ci_lower": "rel_ci_low",
    "rel_effect_size_ci_upper": "rel_ci_high",
    "pvalue": "p_value",
    "statistic": "t_statistic",
}


def ratio_metric(metric: str, cuped: bool = False, alpha: float = 0.05, **power_args) -> tt.RatioOfMeans:
    """tea-tasting's ratio metric for `metric` ("ctr" or "cvr"), two-sided at level `alpha`, optionally CUPED.

    `power_args` (power, ratio, rel_effect_size, n_obs) are passed on for `solve_power`.
    """
    numerator, denominator = METRICS[metric]
    covariates = CUPED_COVARIATE if cuped else (None, None)
    return tt.RatioOfMeans(numerator, denominator, *covariates,
                           confidence_level=1 - alpha, alpha=alpha, **power_args)


def arm_moments(users: pd.DataFrame, arms: Sequence[str], columns: Sequence[str]) -> dict[str, Aggregates]:
    """Sample moments of `columns` in each of `arms` (tea-tasting's Aggregates); LogError if an arm has no users."""
    _check_arms_present(users, arms)
    x = users[list(columns)].to_numpy(dtype=float)  # (n_users, n_columns)
    arm_of_user = users["arm"].to_numpy()  # (n_users,)
    return {arm: sample_moments(x[arm_of_user == arm], columns) for arm in arms}


def analyse(users: pd.DataFrame, control: str = "control", treatment: str = "treatment",
            cuped: bool = False, alpha: float = 0.05) -> ExperimentResult:
    """CTR and CVR of treatment vs control with the delta method (and CUPED if asked), via tea-tasting.

    Returns tea-tasting's ExperimentResult: {"ctr": MeanResult, "cvr": MeanResult}, each with the arm values,
    absolute lift (effect_size) and its CI, relative lift (rel_effect_size) and its CI (log scale), the Welch
    t-test p-value and statistic; CIs are two-sided at 1 - alpha. `.to_pandas()` gives a table.
    """
    _check_covariates(users, cuped)
    metrics = {name: ratio_metric(name, cuped, alpha) for name in METRICS}
    columns = _metric_columns(cuped)
    return tt.Experiment(metrics, variant="arm").analyze(
        arm_moments(users, (control, treatment), columns), control=control)


def lift_table(users: pd.DataFrame, control: str = "control", treatment: str = "treatment",
               alpha: float = 0.05, cuped: Sequence[bool] | None = None) -> pd.DataFrame:
    """One row per (metric, cuped): control, treatment, abs_lift, abs_ci_low/high, rel_lift, rel_ci_low/high,
    p_value, t_statistic. `cuped` defaults to (False, True) when the table has pre-period columns, else (False,).
    """
    if cuped is None:
        cuped = (False, True) if all(c in users.columns for c in CUPED_COVARIATE) else (False,)
    rows = []
    for with_cuped in cuped:
        result = analyse(users, control, treatment, with_cuped, alpha)
        for metric, values in result.items():
            fields = values._asdict()
            rows.append({"metric": metric, "cuped": with_cuped, **{LIFT_COLUMNS[k]: fields[k] for k in LIFT_COLUMNS}})
    return pd.DataFrame(rows)


def arm_summary(users: pd.DataFrame) -> pd.DataFrame:
    """One row per arm: users, impressions, clicks, conversions, ctr, cvr (conversions per impression)."""
    summary = users.groupby("arm", sort=True).agg(
        users=("user_id", "size"), impressions=("impressions", "sum"),
        clicks=("clicks", "sum"), conversions=("conversions", "sum"))
    summary["ctr"] = summary["clicks"] / summary["impressions"]
    summary["cvr"] = summary["conversions"] / summary["impressions"]
    return summary


def srm(users: pd.DataFrame, control: str = "control", treatment: str = "treatment",
        treatment_share: float = 0.5) -> float:
    """Sample-ratio-mismatch p-value: are the user counts consistent with the expected treatment share?

    tea-tasting's SampleRatio with the normal approximation and no continuity correction, i.e. Pearson's
    chi-square test with one degree of freedom (the usual SRM check). A p-value below ~0.001 means the
    assignment or the logging is broken and the lifts should not be trusted.
    """
    _check_arms_present(users, (control, treatment))
    counts = users["arm"].value_counts()
    per_arm = {arm: Aggregates(count_=int(counts[arm])) for arm in (control, treatment)}
    expected_ratio = treatment_share / (1 - treatment_share)  # treatment users per control user
    test = tt.SampleRatio(expected_ratio, method="norm", correction=False)
    return test.analyze(per_arm, control, treatment).pvalue


def power(users: pd.DataFrame, metric: str = "ctr", rel_effect: float | None = None,
          n_users: int | None = None, target_power: float = 0.8, alpha: float = 0.05,
          cuped: bool = False, treatment_share: float = 0.5) -> MeanPowerResult:
    """Power analysis of a ratio metric with the variance of `users` (tea-tasting's `solve_power`).

    Solves for whichever is missing: the minimum detectable relative effect at `n_users` (default: the table's
    size) if `rel_effect` is None; the users needed (both arms together) if `n_users` is None; else the power.
    Feed pre-experiment, A/A or control-arm users: a real treatment effect would inflate the variance.
    Returns MeanPowerResult(power, effect_size, rel_effect_size, n_obs).
    """
    _check_covariates(users, cuped)
    if rel_effect is None:
        parameter = "rel_effect_size"
    elif n_users is None:
        parameter = "n_obs"
    else:
        parameter = "power"
    solver = ratio_metric(metric, cuped, alpha, power=target_power,
                          ratio=treatment_share / (1 - treatment_share),
                          rel_effect_size=rel_effect, n_obs=n_users)
    return solver.solve_power(_moments(users, _metric_columns(cuped)), parameter)[0]


def bootstrap_lift(users: pd.DataFrame, metric: str = "ctr", control: str = "control",
                   treatment: str = "treatment", alpha: float = 0.05, n_resamples: int = 2000,
                   seed: int = 0, method: str = "percentile") -> BootstrapResult:
    """Bootstrap over users of a ratio metric's lift (tea-tasting's Bootstrap, seeded): a cross-check of the
    delta method. Returns BootstrapResult with effect_size / rel_effect_size and their CIs (no p-value).

    `method="bca"` is also available but its jackknife costs O(n_users^2) memory.
    """
    _check_arms_present(users, (control, treatment))
    two_arms = users[users["arm"].isin([control, treatment])]
    bootstrap = tt.Bootstrap(METRICS[metric], _ratio_of_means, confidence_level=1 - alpha,
                             n_resamples=n_resamples, method=method, rng=seed)
    return bootstrap.analyze(two_arms, control, treatment, variant="arm")


def _ratio_of_means(sample: np.ndarray, axis: int) -> np.ndarray:
    """sum(numerator) / sum(denominator) of resampled users; sample: (2, ..., n_users), [numerator, denominator]."""
    means = np.mean(sample, axis=axis)
    return means[0] / means[1]


def _moments(users: pd.DataFrame, columns: Sequence[str]) -> Aggregates:
    return sample_moments(users[list(columns)].to_numpy(dtype=float), columns)


def _metric_columns(cuped: bool) -> list[str]:
    columns = sorted({c for pair in METRICS.values() for c in pair})
    return columns + list(CUPED_COVARIATE) if cuped else columns


def _check_covariates(users: pd.DataFrame, cuped: bool) -> None:
    for column in CUPED_COVARIATE if cuped else ():
        if column not in users.columns:
            raise LogError(column, "missing from the user table: CUPED needs the pre-period covariates")


def _check_arms_present(users: pd.DataFrame, arms: Sequence[str]) -> None:
    found = set(users["arm"].unique())
    for arm in arms:
        if arm not in found:
            raise LogError("arm", f"no users in arm {arm!r} (arms: {sorted(map(str, found))})")
