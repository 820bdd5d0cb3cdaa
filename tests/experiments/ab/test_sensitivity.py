"""Sample sizes against the closed form by hand, and the bootstrap SE of the A/B-to-interleaving ratio."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.ab.sensitivity import ab_sample_size, interleaving_sample_size, users_needed, users_ratio

Z_SUM_SQUARED = (1.959963984540054 + 0.8416212335729143) ** 2  # (z_0.975 + z_0.8)^2 = 7.849


def test_users_needed_is_the_closed_form():
    assert users_needed(0.1, 1.0) == pytest.approx(Z_SUM_SQUARED / 0.01, rel=1e-12)  # 784.9
    assert users_needed(-0.1, 1.0) == users_needed(0.1, 1.0)
    assert users_needed(0.0, 0.0) == users_needed(0.0, 1.0) == float("inf")  # an A/A run: no effect to detect
    assert users_needed(0.1, 1.0, power=0.5) == pytest.approx(1.959963984540054**2 / 0.01, rel=1e-12)


def test_ab_sample_size_uses_the_delta_method_variance_of_each_arm():
    control = np.array([[1, 10], [3, 20], [0, 5], [2, 12]])  # (n_users, 2): clicks, impressions
    treatment = np.array([[2, 9], [4, 25], [1, 6], [3, 10], [5, 30]])
    effect = 15 / 80 - 6 / 47
    variance = 0.0
    for arm in (control, treatment):
        x, y = arm[:, 0].astype(float), arm[:, 1].astype(float)
        cov = np.cov(x, y, ddof=1)[0, 1]
        variance += (x.var(ddof=1) / y.mean() ** 2 - 2 * x.mean() * cov / y.mean() ** 3
                     + x.mean() ** 2 * y.var(ddof=1) / y.mean() ** 4)  # n * Var(ratio)
    size = ab_sample_size(control, treatment)
    assert size.effect == pytest.approx(effect, rel=1e-12)
    assert size.variance == pytest.approx(variance, rel=1e-12)
    assert size.users == pytest.approx(Z_SUM_SQUARED * variance / effect**2, rel=1e-12)


def test_interleaving_sample_size_uses_the_mean_and_variance_of_the_preferences():
    preferences = np.array([1, -1, 0, 1, 1, 0, 1, -1])
    mean, var = 2 / 8, preferences.var(ddof=1)
    size = interleaving_sample_size(preferences)
    assert (size.effect, size.variance) == (pytest.approx(mean), pytest.approx(var))
    assert size.users == pytest.approx(Z_SUM_SQUARED * var / mean**2, rel=1e-12)


def simulated(rng: np.random.Generator, n_ab: int = 3000, n_interleaving: int = 2000):
    """A/B arms with a 50% CTR lift and per-user interleaving preferences leaning to B (mean 0.2): both effects
    are ~10 standard errors from zero, as a simulation that compares the designs should make them."""
    def arm(lift: float) -> np.ndarray:  # (n_ab, 2): clicks, impressions
        impressions = 1 + rng.poisson(12, n_ab)
        ctr = rng.beta(2.0, 38.0, n_ab) * lift
        return np.column_stack([rng.binomial(impressions, ctr), impressions])
    preferences = rng.choice([-1, 0, 1], size=n_interleaving, p=[0.25, 0.3, 0.45])
    return arm(1.0), arm(1.5), preferences


def test_users_ratio_is_two_arms_over_interleaving_and_its_se_matches_the_spread_across_simulations():
    control, treatment, preferences = simulated(np.random.default_rng(0))
    result = users_ratio(control, treatment, preferences, n_boot=300, seed=1)
    assert result.ratio == pytest.approx(2 * result.ab.users / result.interleaving.users, rel=1e-12)
    assert result.ci_low < result.ratio < result.ci_high
    assert users_ratio(control, treatment, preferences, n_boot=300, seed=1) == result  # seeded

    rng = np.random.default_rng(99)
    ratios = []  # of 60 independent simulations: their spread is the SE the bootstrap estimates from one
    for _ in range(60):
        c, t, p = simulated(rng)
        ratios.append(2 * ab_sample_size(c, t).users / interleaving_sample_size(p).users)
    assert 0.5 < result.se / np.std(ratios, ddof=1) < 2
