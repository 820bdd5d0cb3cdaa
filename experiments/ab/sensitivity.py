"""How many users an A/B test and an interleaving test need to detect the same ranker change.

Inputs are per-user outcomes as arrays (from a simulation or a real pilot); nothing here knows where they come
from. Sample sizes use the closed-form normal approximation, 80% power and 5% two-sided by default:

    n = (z_{1-alpha/2} + z_{power})^2 * variance / effect^2

- A/B, CTR ratio metric: effect = CTR_t - CTR_c; variance = sigma_c^2 + sigma_t^2 with sigma^2 the per-user
  delta-method variance of the ratio (tea-tasting's `Aggregates.ratio_var`); n is users per arm.
- Interleaving: every user sees the interleaved list, one group; outcomes are per-user preferences in {-1, 0, 1},
  sign(credited B clicks - credited A clicks), for every user exposed, 0 for a user without credited clicks
  (`interleaving.exposed_outcomes`; only clicks on contested positions are credited, `interleaving.credit`);
  effect = their mean, variance = their variance; n is users in total. Dropping the users without clicks would
  count only the users who click, which no experiment can enroll in advance, and flatter interleaving by about
  1 / (share of users who click) against the A/B side, which counts every user.

`users_ratio` compares the totals (A/B both arms / interleaving) and bootstraps its simulation standard error.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.stats

from experiments.ab.moments import sample_moments


class SampleSize(NamedTuple):
    """Users needed for one design, and the effect and variance it was computed from."""

    effect: float
    variance: float  # n * Var(effect estimate), for n as below
    users: float  # A/B: per arm; interleaving: in total


class UsersRatio(NamedTuple):
    """A/B users (both arms) / interleaving users, with its bootstrap standard error and percentile interval."""

    ratio: float
    se: float
    ci_low: float
    ci_high: float
    ab: SampleSize
    interleaving: SampleSize


def users_needed(effect: float, variance: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """n = (z_{1-alpha/2} + z_{power})^2 * variance / effect^2: the closed-form normal sample size (inf if 0 effect:
    no number of users detects no difference)."""
    if effect == 0:
        return float("inf")
    z_sum = scipy.stats.norm.ppf(1 - alpha / 2) + scipy.stats.norm.ppf(power)
    return float(z_sum**2 * variance / np.float64(effect) ** 2)


def ab_sample_size(control: np.ndarray, treatment: np.ndarray, alpha: float = 0.05,
                   power: float = 0.8) -> SampleSize:
    """Users per arm for an A/B test of CTR; control, treatment: (n_users, 2) per-user [clicks, impressions]."""
    arms = [sample_moments(arm, ("clicks", "impressions")) for arm in (control, treatment)]
    ctr_c, ctr_t = (arm.mean("clicks") / arm.mean("impressions") for arm in arms)
    variance = sum(arm.ratio_var("clicks", "impressions") for arm in arms)  # sigma_c^2 + sigma_t^2
    effect = ctr_t - ctr_c
    return SampleSize(effect, variance, users_needed(effect, variance, alpha, power))


def interleaving_sample_size(preferences: np.ndarray, alpha: float = 0.05, power: float = 0.8) -> SampleSize:
    """Users for an interleaving test; preferences: (n_users,) per-user outcomes of every exposed user, e.g.
    `interleaving.exposed_outcomes`."""
    preferences = np.asarray(preferences, dtype=float)
    effect, variance = float(preferences.mean()), float(preferences.var(ddof=1))
    return SampleSize(effect, variance, users_needed(effect, variance, alpha, power))


def users_ratio(control: np.ndarray, treatment: np.ndarray, preferences: np.ndarray, n_boot: int = 500,
                seed: int = 0, alpha: float = 0.05, power: float = 0.8) -> UsersRatio:
    """How many times more users A/B needs than interleaving (2 * per-arm A/B users / interleaving users).

    The standard error is a bootstrap over users, resampling control, treatment and interleaving users
    independently (seeded numpy); if the two designs were simulated on the same users this ignores their
    positive correlation, so the SE errs on the large side. When an effect is near zero in a resample its
    sample size explodes: a wide percentile interval says the simulation is too small to compare the designs.
    """
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, got {n_boot}")
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a, dtype=float) for a in (control, treatment, preferences)]

    def ratio_of(c: np.ndarray, t: np.ndarray, p: np.ndarray) -> tuple[float, SampleSize, SampleSize]:
        ab, interleaving = ab_sample_size(c, t, alpha, power), interleaving_sample_size(p, alpha, power)
        return 2 * ab.users / interleaving.users, ab, interleaving

    ratio, ab, interleaving = ratio_of(*arrays)
    boot = np.array([ratio_of(*(a[rng.integers(len(a), size=len(a))] for a in arrays))[0]
                     for _ in range(n_boot)])  # (n_boot,)
    ci_low, ci_high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return UsersRatio(ratio, float(boot.std(ddof=1)), float(ci_low), float(ci_high), ab, interleaving)
