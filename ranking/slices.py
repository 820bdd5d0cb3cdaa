"""Evaluation slices: boolean row masks of a split, from train statistics and the feature store's counts.

Metric keys are `<split>/<metric>/<slice>` (ranking/report.py) with slices
    query_head / query_torso / query_tail   by the query's number of train requests
    product_new / product_old               product never / already seen in train
    product_cold                            at most product_cold_max_impressions (default 0) impressions of the
                                            product in the feature store's longest count window when it was
                                            shown (cold start: what counts cannot tell)
    product_history_<lo>_<hi>, ..._<lo>_plus  the product's impressions in that longest window, in buckets with
                                            upper edges product_history_edges (default 0, 10, 30, 100):
                                            product_history_0, _1_10, _11_30, _31_100, _101_plus; the gain by
                                            bucket is the cold-start curve (gain_slices entry `product_history`)
    user_history / user_no_history          history_count > 0 or not (when the column is there)
    position_<k>                            one slice per position
Boundaries are `ranking.config.SliceConfig`; SLICE_PATTERN there matches every name this module produces.
"""

from __future__ import annotations

import numpy as np

from feature_store.schema import COUNT_WINDOWS_DAYS
from ranking.config import SliceConfig
from ranking.training_set import Split


def history_buckets(edges: tuple[int, ...]) -> list[tuple[str, int, float]]:
    """(slice name, lowest count, highest count) of each product-history bucket, e.g. edges (0, 10) ->
    product_history_0 [0, 0], product_history_1_10 [1, 10], product_history_11_plus [11, inf)."""
    out, low = [], 0
    for high in edges:
        out.append((f"product_history_{low}" if low == high else f"product_history_{low}_{high}", low, high))
        low = high + 1
    out.append((f"product_history_{low}_plus", low, np.inf))
    return out


def expand_slices(names: tuple[str, ...], cfg: SliceConfig) -> tuple[str, ...]:
    """Slice names with `product_history` replaced by every bucket of cfg.product_history_edges, in order."""
    out = []
    for name in names:
        out += [b for b, _, _ in history_buckets(cfg.product_history_edges)] if name == "product_history" else [name]
    return tuple(dict.fromkeys(out))


# Each slice family, the columns it needs (in the evaluated split and in train) and what it is about.
SLICE_COLUMNS: dict[str, tuple[str, ...]] = {
    "query_head/torso/tail": ("query_id", "request_id"),
    "product_new/old": ("product_id",),
    "product_cold, product_history_*": (f"product_impressions_{max(COUNT_WINDOWS_DAYS)}d",),
    "user_history/no_history": ("history_count",),
    "position_<k>": ("position",),
}


TRAIN_STATISTICS = ("query_head/torso/tail", "product_new/old")  # families that count train rows too


def skipped_slices(train: Split, split: Split) -> dict[str, str]:
    """{slice family: why it is not computed} for every family whose columns the training set lacks."""
    out = {}
    for family, needs in SLICE_COLUMNS.items():
        from_train = family in TRAIN_STATISTICS  # the others read the evaluated split alone
        missing = [c for c in needs if c not in split.columns or (from_train and c not in train.columns)]
        if missing:
            out[family] = f"no {', '.join(missing)} column"
    return out


def slice_masks(train: Split, split: Split, cfg: SliceConfig) -> dict[str, np.ndarray]:
    """Boolean row masks of `split` for every slice whose columns exist, from train statistics.

    A slice family whose columns are absent (a user's click log without queries or products) is left out, never
    filled with a mask that covers the whole split; `skipped_slices` says which and why.
    """
    skipped = skipped_slices(train, split)
    out: dict[str, np.ndarray] = {}
    if "query_head/torso/tail" not in skipped:
        q_train, r_train = train.columns["query_id"], train.columns["request_id"]
        _, first = np.unique(np.stack([_codes(q_train), _codes(r_train)], axis=1), axis=0, return_index=True)
        queries, requests_per_query = np.unique(q_train[first], return_counts=True)  # one row per (query, request)
        q = split.columns["query_id"]
        seen = len(queries) > 0
        idx = np.clip(np.searchsorted(queries, q), 0, max(len(queries) - 1, 0))
        n_requests = np.where(queries[idx] == q, requests_per_query[idx], 0) if seen else np.zeros(len(q))
        out["query_head"] = n_requests >= cfg.query_head_min_requests
        out["query_torso"] = (n_requests > cfg.query_tail_max_requests) & (n_requests < cfg.query_head_min_requests)
        out["query_tail"] = n_requests <= cfg.query_tail_max_requests
    if "product_new/old" not in skipped:
        old = np.isin(split.columns["product_id"], train.columns["product_id"])
        out["product_new"], out["product_old"] = ~old, old
    if "product_cold, product_history_*" not in skipped:
        counts = split.columns[f"product_impressions_{max(COUNT_WINDOWS_DAYS)}d"]
        out["product_cold"] = counts <= cfg.product_cold_max_impressions
        for name, low, high in history_buckets(cfg.product_history_edges):
            out[name] = (counts >= low) & (counts <= high)
    if "user_history/no_history" not in skipped:
        has = split.columns["history_count"] > 0
        out["user_history"], out["user_no_history"] = has, ~has
    if "position_<k>" not in skipped and np.issubdtype(split.columns["position"].dtype, np.integer):
        for k in np.unique(split.columns["position"]):
            out[f"position_{int(k)}"] = split.columns["position"] == k
    return out


def _codes(values: np.ndarray) -> np.ndarray:
    """Integer codes of any sortable ids (int64 or bytes), for stacking two id columns."""
    return np.unique(values, return_inverse=True)[1].reshape(-1)
