"""Sample moments in tea-tasting's `Aggregates`: the input of its delta method, CUPED and power analysis."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tea_tasting.aggr import Aggregates


def sample_moments(x: np.ndarray, names: Sequence[str]) -> Aggregates:
    """Count, means, variances and covariances (ddof=1) of the columns of x: (n_rows, len(names)).

    The same numbers as `tea_tasting.aggr.read_aggregates` (tested), without its dataframe round trip, which
    dominates the run time on small tables and inside bootstrap loops. Variances are NaN for a single row.
    """
    x = np.asarray(x, dtype=float).reshape(len(x), len(names))
    n_rows, n_columns = x.shape
    cov = (np.cov(x, rowvar=False, ddof=1).reshape(n_columns, n_columns) if n_rows > 1
           else np.full((n_columns, n_columns), np.nan))  # (n_columns, n_columns)
    return Aggregates(
        count_=n_rows,
        mean_={name: float(m) for name, m in zip(names, x.mean(axis=0))},
        var_={name: float(cov[i, i]) for i, name in enumerate(names)},
        cov_={(a, b): float(cov[i, j]) for i, a in enumerate(names) for j, b in enumerate(names) if i < j},
    )
