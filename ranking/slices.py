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


def slice_masks(train: Split, split: Split, cfg: SliceConfig) -> dict[str, np.ndarray]:
    """Boolean row masks of `split` for every slice, from train statistics."""
    q_train, r_train = train.columns["query_id"], train.columns["request_id"]
    pairs = np.unique(np.stack([q_train, r_train], axis=1), axis=0)  # one row per (query, request)
    queries, requests_per_query = np.unique(pairs[:, 0], return_counts=True)
    q = split.columns["query_id"]
    idx = np.searchsorted(queries, q)
    idx = np.clip(idx, 0, max(len(queries) - 1, 0))
    seen = len(queries) > 0
    n_requests = np.where(seen & (queries[idx] == q), requests_per_query[idx], 0) if seen else np.zeros(len(q))
    out = {
        "query_head": n_requests >= cfg.query_head_min_requests,
        "query_torso": (n_requests > cfg.query_tail_max_requests) & (n_requests < cfg.query_head_min_requests),
        "query_tail": n_requests <= cfg.query_tail_max_requests,
    }
    old = np.isin(split.columns["product_id"], train.columns["product_id"])
    out["product_new"], out["product_old"] = ~old, old
    cold_counts = f"product_impressions_{max(COUNT_WINDOWS_DAYS)}d"
    if cold_counts in split.columns:
        counts = split.columns[cold_counts]
        out["product_cold"] = counts <= cfg.product_cold_max_impressions
        for name, low, high in history_buckets(cfg.product_history_edges):
            out[name] = (counts >= low) & (counts <= high)
    if "history_count" in split.columns:
        has = split.columns["history_count"] > 0
        out["user_history"], out["user_no_history"] = has, ~has
    for k in np.unique(split.columns["position"]):
        out[f"position_{int(k)}"] = split.columns["position"] == k
    return out
