"""Seeded synthetic experiment logs for the tests: users differ in CTR, so impressions are not independent."""

from __future__ import annotations

import numpy as np
import pandas as pd


def synthetic_log(rng: np.random.Generator, n_users: int = 200, ctr_lift: float = 0.0) -> pd.DataFrame:
    """One row per (user, request); half the users (at random) in treatment, whose CTR is x (1 + ctr_lift)."""
    user_id = np.arange(n_users)
    treated = rng.permutation(n_users) < n_users // 2  # (n_users,) exact 50/50 split
    base_ctr = rng.beta(0.5, 9.5, n_users)  # (n_users,) mean 5%, sd 6.6%: strongly heterogeneous
    ctr = np.clip(base_ctr * np.where(treated, 1 + ctr_lift, 1.0), 0, 1)
    pre_impressions = 1 + rng.poisson(15, n_users)
    pre_clicks = rng.binomial(pre_impressions, base_ctr)

    requests = 1 + rng.poisson(2, n_users)  # (n_users,)
    row_user = np.repeat(user_id, requests)  # (n_rows,)
    impressions = 1 + rng.poisson(4, len(row_user))
    clicks = rng.binomial(impressions, ctr[row_user])
    return pd.DataFrame({
        "user_id": row_user,
        "arm": np.where(treated[row_user], "treatment", "control"),
        "request_id": np.arange(len(row_user)),
        "ts": pd.Timestamp("2024-05-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 86_400, len(row_user)), "s"),
        "impressions": impressions,
        "clicks": clicks,
        "conversions": rng.binomial(clicks, 0.3),
        "pre_clicks": pre_clicks[row_user],
        "pre_impressions": pre_impressions[row_user],
    })


def synthetic_users(rng: np.random.Generator, n_users: int = 200, ctr_lift: float = 0.0) -> pd.DataFrame:
    """A per-user log (one row per user, the documented aggregate form): the same model, drawn per user."""
    treated = rng.permutation(n_users) < n_users // 2
    base_ctr = rng.beta(0.5, 9.5, n_users)
    ctr = np.clip(base_ctr * np.where(treated, 1 + ctr_lift, 1.0), 0, 1)
    impressions = 1 + rng.poisson(12, n_users)
    pre_impressions = 1 + rng.poisson(15, n_users)
    clicks = rng.binomial(impressions, ctr)
    return pd.DataFrame({
        "user_id": np.arange(n_users),
        "arm": np.where(treated, "treatment", "control"),
        "impressions": impressions,
        "clicks": clicks,
        "conversions": rng.binomial(clicks, 0.3),
        "pre_clicks": rng.binomial(pre_impressions, base_ctr),
        "pre_impressions": pre_impressions,
    })
