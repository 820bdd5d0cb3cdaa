"""Offline pCTR metrics shared by training, benchmarks and notebooks (design doc section 6).

Notation: y in {0, 1} is the click label, p the predicted click probability, p̄ = mean(y) the base CTR.

Pure numpy on purpose: importing this module must stay cheap (no TensorFlow, no scikit-learn), so benchmarks
and notebooks can use the exact definitions the trainer logs to MLflow (`<split>/<metric>`, section 9).

AUC, including GAUC's per-group AUC, is computed from sorted scores in O(n log n): for each block of tied
scores, every positive in it beats the negatives below the block and half-beats the negatives inside it
(Mann-Whitney U with average ranks). Probabilities are float64 throughout.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

__all__ = [
    "auc",
    "logloss",
    "entropy",
    "normalized_entropy",
    "calibration",
    "group_auc",
    "rela_impr",
    "oracle_gap_closed",
    "evaluate",
    "slice_metrics",
    "calibration_curve",
    "bootstrap_ci",
    "auc_difference_ci",
    "auc_difference_cis",
]


# ----------------------------------------------------------------------------------------------- validation


def _as_1d(a, name: str, dtype=None) -> np.ndarray:
    """A 1-D array; a Keras-style (n, 1) prediction column is flattened, other shapes are rejected."""
    a = np.asarray(a, dtype=dtype)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (or shape (n, 1)), got shape {a.shape}")
    return a


def _check_len(n: int, a: np.ndarray, name: str) -> None:
    if a.shape[0] != n:
        raise ValueError(f"length mismatch: y has {n} rows but {name} has {a.shape[0]}")


def _labels_and_scores(y, p) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 copies of y (values 0/1) and p (no NaN), same non-zero length."""
    y = _as_1d(y, "y")
    p = _as_1d(p, "p", dtype=np.float64)
    _check_len(y.shape[0], p, "p")
    if y.shape[0] == 0:
        raise ValueError("empty input: y and p have no rows")
    n_nan = int(np.isnan(p).sum())
    if n_nan:
        raise ValueError(f"p contains {n_nan} NaN value(s)")
    y = y.astype(np.float64)
    if not np.all((y == 0.0) | (y == 1.0)):
        raise ValueError("y must contain only 0 and 1 (click labels)")
    return y, p


def _require_both_classes(n_pos: float, n_neg: float, what: str = "AUC") -> None:
    if n_pos <= 0 or n_neg <= 0:
        only = "positives" if n_neg <= 0 else "negatives"
        raise ValueError(f"{what} is undefined when only one class is present (only {only} in y)")


# ---------------------------------------------------------------------------------------------- point metrics


def auc(y, p, sample_weight=None) -> float:
    """ROC AUC = P(p_pos > p_neg) + 0.5 * P(p_pos == p_neg), weighted by sample_weight if given.

    Unweighted this is Mann-Whitney U / (n_pos * n_neg) with average ranks for ties; O(n log n).
    Raises ValueError for one class, length mismatch, NaN in p, or labels other than 0/1.
    """
    y, p = _labels_and_scores(y, p)
    if sample_weight is None:
        w = np.ones_like(p)
    else:
        w = _as_1d(sample_weight, "sample_weight", dtype=np.float64)
        _check_len(y.shape[0], w, "sample_weight")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError("sample_weight must be finite and non-negative")

    order, starts = _tie_blocks(p)
    return _auc_from_blocks(y[order], w[order], starts)


def _tie_blocks(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order sorting p ascending, start of each block of tied scores in that order)."""
    order = np.argsort(p, kind="stable")
    p_sorted = p[order]
    return order, np.flatnonzero(np.r_[True, p_sorted[1:] != p_sorted[:-1]])


def _auc_from_blocks(y_sorted: np.ndarray, w_sorted: np.ndarray, starts: np.ndarray) -> float:
    """Weighted AUC from labels and weights in score order and the tie-block starts (see `_tie_blocks`)."""
    block_pos = np.add.reduceat(w_sorted * y_sorted, starts)
    block_neg = np.add.reduceat(w_sorted * (1.0 - y_sorted), starts)
    total_pos, total_neg = block_pos.sum(), block_neg.sum()
    _require_both_classes(total_pos, total_neg)
    neg_below = np.cumsum(block_neg) - block_neg
    return float(np.sum(block_pos * (neg_below + 0.5 * block_neg)) / (total_pos * total_neg))


def logloss(y, p, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy -mean(y log q + (1 - y) log(1 - q)), q = clip(p, eps, 1 - eps), natural log."""
    y, p = _labels_and_scores(y, p)
    q = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(q) + (1.0 - y) * np.log1p(-q)))


def entropy(base_rate: float) -> float:
    """H(p̄) = -(p̄ log p̄ + (1 - p̄) log(1 - p̄)) in nats, with 0 log 0 = 0: the logloss of predicting p̄."""
    r = float(base_rate)
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"base_rate must lie in [0, 1], got {base_rate}")
    return float(-sum(x * np.log(x) for x in (r, 1.0 - r) if x > 0.0))


def normalized_entropy(y, p, eps: float = 1e-7) -> float:
    """NE = logloss(y, p) / H(mean(y)) (He et al. 2014); < 1 beats predicting the base CTR. Needs both classes."""
    y, p = _labels_and_scores(y, p)
    n_pos = y.sum()
    _require_both_classes(n_pos, y.shape[0] - n_pos, "NE")
    return logloss(y, p, eps=eps) / entropy(n_pos / y.shape[0])


def calibration(y, p) -> float:
    """Calibration = sum(p) / sum(y): predicted over observed clicks, target 1.0. Needs at least one positive."""
    y, p = _labels_and_scores(y, p)
    n_pos = y.sum()
    if n_pos == 0:
        raise ValueError("calibration is undefined without positives (sum(y) == 0)")
    return float(p.sum() / n_pos)


def group_auc(y, p, groups) -> float:
    """GAUC = sum_g n_g * AUC_g / sum_g n_g over groups g with both classes; n_g = impressions in g.

    Groups are requests or users (any sortable ids). Vectorised: one sort by (group, p), no loop over groups.
    Returns NaN if no group has both classes.
    """
    y, p = _labels_and_scores(y, p)
    n = y.shape[0]
    groups = _as_1d(groups, "groups")
    _check_len(n, groups, "groups")
    _, codes = np.unique(groups, return_inverse=True)
    codes = codes.reshape(-1)  # dense group index 0..G-1
    n_groups = int(codes.max()) + 1

    order = np.lexsort((p, codes))  # by group, then score
    g_sorted, p_sorted, y_sorted = codes[order], p[order], y[order]
    # A block is a run of tied scores inside one group.
    is_start = np.r_[True, (g_sorted[1:] != g_sorted[:-1]) | (p_sorted[1:] != p_sorted[:-1])]
    starts = np.flatnonzero(is_start)
    block_group = g_sorted[starts]
    block_size = np.diff(np.r_[starts, n]).astype(np.float64)
    block_pos = np.add.reduceat(y_sorted, starts)
    block_neg = block_size - block_pos

    # Negatives below a block within its group = global running count minus the count before the group starts
    # (groups are contiguous in the sorted order).
    neg_before_block = np.cumsum(block_neg) - block_neg
    group_neg = np.bincount(block_group, weights=block_neg, minlength=n_groups)
    neg_before_group = np.cumsum(group_neg) - group_neg
    neg_below = neg_before_block - neg_before_group[block_group]
    u = np.bincount(block_group, weights=block_pos * (neg_below + 0.5 * block_neg), minlength=n_groups)

    group_size = np.bincount(codes, minlength=n_groups).astype(np.float64)
    group_pos = np.bincount(codes, weights=y, minlength=n_groups)
    group_neg_total = group_size - group_pos
    valid = (group_pos > 0) & (group_neg_total > 0)
    if not valid.any():
        return float("nan")
    auc_g = u[valid] / (group_pos[valid] * group_neg_total[valid])
    return float(np.average(auc_g, weights=group_size[valid]))


def rela_impr(auc_model: float, auc_base: float) -> float:
    """RelaImpr = ((AUC_model - 0.5) / (AUC_base - 0.5) - 1) * 100, in percent. Raises if AUC_base == 0.5."""
    if auc_base == 0.5:
        raise ValueError("rela_impr is undefined for a baseline AUC of exactly 0.5 (e.g. a constant predictor)")
    return float(((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0)


def oracle_gap_closed(auc_model: float, auc_baseline: float, auc_oracle: float) -> float:
    """Share of the baseline-to-oracle gap the model closes: (AUC_model - AUC_baseline) / (AUC_oracle - AUC_baseline)."""
    if auc_oracle == auc_baseline:
        raise ValueError("oracle_gap_closed is undefined when the oracle AUC equals the baseline AUC")
    return float((auc_model - auc_baseline) / (auc_oracle - auc_baseline))


# ---------------------------------------------------------------------------------------------- metric sets


def evaluate(y, p, request_ids=None, user_ids=None) -> dict[str, float]:
    """The standard metric set: count, ctr, auc, logloss, ne, calibration, and gauc_request / gauc_user when ids are given.

    Keys match the MLflow names `<split>/<metric>` (design doc section 9). Raises ValueError if y has one class.
    """
    y, p = _labels_and_scores(y, p)
    out = {
        "count": float(y.shape[0]),
        "ctr": float(y.mean()),
        "auc": auc(y, p),
        "logloss": logloss(y, p),
        "ne": normalized_entropy(y, p),
        "calibration": calibration(y, p),
    }
    if request_ids is not None:
        out["gauc_request"] = group_auc(y, p, request_ids)
    if user_ids is not None:
        out["gauc_user"] = group_auc(y, p, user_ids)
    return out


def slice_metrics(
    y,
    p,
    slices: Mapping[str, np.ndarray],
    min_count: int = 100,
    *,
    request_ids=None,
    user_ids=None,
) -> dict[str, dict[str, float]]:
    """{slice_name: evaluate(y[mask], p[mask], ...)} for boolean row masks (e.g. "query_tail", "product_new").

    Slices with fewer than min_count rows, or with only clicks or only non-clicks, are skipped: they are
    absent from the result (their AUC/NE would be undefined or noise). Ids are sliced with the same mask.
    """
    y, p = _labels_and_scores(y, p)
    n = y.shape[0]
    ids = {"request_ids": request_ids, "user_ids": user_ids}
    for key, value in ids.items():
        if value is not None:
            ids[key] = _as_1d(value, key)
            _check_len(n, ids[key], key)
    out = {}
    for name, mask in slices.items():
        mask = _as_1d(mask, f"slice {name!r}")
        if mask.dtype != np.bool_:
            raise ValueError(f"slice {name!r} must be a boolean mask, got dtype {mask.dtype}")
        _check_len(n, mask, f"slice {name!r}")
        y_s = y[mask]
        n_pos = y_s.sum()
        if y_s.shape[0] < min_count or n_pos == 0 or n_pos == y_s.shape[0]:
            continue
        sliced_ids = {k: (None if v is None else v[mask]) for k, v in ids.items()}
        out[name] = evaluate(y_s, p[mask], **sliced_ids)
    return out


# ---------------------------------------------------------------------------------- reliability and intervals


def calibration_curve(y, p, n_bins: int = 10, strategy: str = "quantile"):
    """Reliability-plot data: (mean_pred, frac_pos, counts) per non-empty bin of p, ordered by p.

    strategy "quantile": edges at quantiles of p (about equal counts; duplicate edges merge);
    "uniform": n_bins equal-width bins on [0, 1]. A bin is [edge_k, edge_k+1), the last one closed.
    Perfect calibration means frac_pos ≈ mean_pred in every bin.
    """
    y, p = _labels_and_scores(y, p)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if strategy == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)))
    elif strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")
    bin_idx = np.searchsorted(edges[1:-1], p, side="right")  # all zeros when there is a single bin
    n_out = max(len(edges) - 1, 1)  # quantile edges of a constant p collapse to one
    counts = np.bincount(bin_idx, minlength=n_out)
    sum_pred = np.bincount(bin_idx, weights=p, minlength=n_out)
    sum_pos = np.bincount(bin_idx, weights=y, minlength=n_out)
    keep = counts > 0
    return sum_pred[keep] / counts[keep], sum_pos[keep] / counts[keep], counts[keep]


def _bootstrap_counts(n: int, groups, n_boot: int, seed: int):
    """n_boot resamples of n rows as per-row draw counts: rows drawn with replacement, or whole groups (every row
    of a group appears as often as its group was drawn) when groups is given."""
    if groups is None:
        codes, n_groups = np.arange(n), n
    else:
        groups = _as_1d(groups, "groups")
        _check_len(n, groups, "groups")
        _, codes = np.unique(groups, return_inverse=True)
        codes = codes.reshape(-1)
        n_groups = int(codes.max()) + 1
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.bincount(rng.integers(0, n_groups, size=n_groups), minlength=n_groups)[codes]


def _percentile_interval(values: list[float], n_boot: int, alpha: float, failure: str) -> tuple[float, float]:
    """The alpha/2 and 1 - alpha/2 quantiles of the bootstrap values; ValueError if more than half are missing."""
    if len(values) * 2 < n_boot or not values:
        raise ValueError(f"only {len(values)} of {n_boot} bootstrap resamples {failure}")
    low, high = np.percentile(values, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return float(low), float(high)


def bootstrap_ci(
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    y,
    p,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    groups=None,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of metric_fn(y, p): the alpha/2 and 1 - alpha/2 quantiles.

    Resamples rows with replacement, or whole groups (e.g. requests) when groups is given, so correlated rows
    stay together. Resamples where metric_fn raises ValueError (e.g. one class) or returns NaN are dropped;
    if more than half are dropped, raises ValueError.
    """
    y, p = _labels_and_scores(y, p)
    n = y.shape[0]
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    rows = np.arange(n)
    values = []
    for times_drawn in _bootstrap_counts(n, groups, n_boot, seed):
        idx = np.repeat(rows, times_drawn)
        try:
            v = float(metric_fn(y[idx], p[idx]))
        except ValueError:
            continue
        if not np.isnan(v):
            values.append(v)
    return _percentile_interval(values, n_boot, alpha, "gave a defined metric")


def auc_difference_ci(
    y,
    p_model,
    p_baseline,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    groups=None,
) -> tuple[float, float, float]:
    """(AUC(p_model) - AUC(p_baseline), low, high): the difference on the same rows and its paired percentile
    bootstrap (1 - alpha) interval.

    Paired: both models are scored on the same resample each time, so the interval is that of the difference,
    much narrower than either AUC's own interval when the models agree on most rows. With groups (e.g. request
    ids) whole groups are resampled. A resample is a weight per row (how often it was drawn) and the weighted AUC
    equals the AUC of the repeated rows, so each model's scores are sorted once: O(n) per resample.
    Resamples with one class are dropped; if more than half are, raises ValueError.
    """
    return auc_difference_cis(y, {"model": p_model}, p_baseline, n_boot, alpha, seed, groups)["model"]


def auc_difference_cis(
    y,
    p_models: Mapping[str, Any],
    p_baseline,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    groups=None,
) -> dict[str, tuple[float, float, float]]:
    """`auc_difference_ci` of several models against one baseline on the same resamples: {name: (difference, low,
    high)}, each equal to what auc_difference_ci(y, p_models[name], p_baseline, ...) returns alone. The baseline's
    AUC on each resample is computed once for all models."""
    y, p_baseline = _labels_and_scores(y, p_baseline)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    views = {}  # name -> (order, labels in that order, tie-block starts)
    for name, p in {**p_models, None: p_baseline}.items():
        _, p = _labels_and_scores(y, p)
        order, starts = _tie_blocks(p)
        views[name] = (order, y[order], starts)

    def aucs(w: np.ndarray) -> dict:
        return {name: _auc_from_blocks(ys, w[order], starts) for name, (order, ys, starts) in views.items()}

    full = aucs(np.ones(y.shape[0]))
    values: dict[str, list[float]] = {name: [] for name in p_models}
    for times_drawn in _bootstrap_counts(y.shape[0], groups, n_boot, seed):
        try:
            resampled = aucs(times_drawn.astype(np.float64))
        except ValueError:  # a resample with one class: dropped for every model
            continue
        for name in p_models:
            values[name].append(resampled[name] - resampled[None])
    return {name: (full[name] - full[None], *_percentile_interval(values[name], n_boot, alpha, "had both classes"))
            for name in p_models}
