"""Evaluation of a model's predictions on a split: the MLflow metric keys, slices, plots and the comparison table.

Keys follow DESIGN.md section 9: `<split>/<metric>` and `<split>/<metric>/<slice>` with slices
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
Metric definitions are `core.metrics` (numpy), the same ones benchmarks and notebooks use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.schema import COUNT_WINDOWS_DAYS
from core import metrics
from ranking.data import Split

SLICE_METRICS = ("auc", "logloss", "ne", "calibration", "count")
HEADLINE = ("auc", "logloss", "ne", "calibration", "gauc_request", "gauc_user")


@dataclass(frozen=True)
class SliceConfig:
    """Slice boundaries (train frequencies, feature-store counts) and the smallest slice that gets metrics."""

    query_head_min_requests: int = 100  # head: queries with at least this many train requests
    query_tail_max_requests: int = 4  # tail: at most this many (0 = never seen in train)
    product_cold_max_impressions: int = 0  # cold: the product's longest-window impression count is at most this
    product_history_edges: tuple[int, ...] = (0, 10, 30, 100)  # upper edges of the product-history buckets
    min_count: int = 100

    def validate(self) -> None:
        from core.config import ConfigError

        if self.query_tail_max_requests >= self.query_head_min_requests:
            raise ConfigError("slices: query_tail_max_requests must be below query_head_min_requests")
        if self.product_cold_max_impressions < 0:
            raise ConfigError("slices: product_cold_max_impressions must be >= 0")
        edges = self.product_history_edges
        if not edges or edges[0] < 0 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ConfigError(f"slices: product_history_edges must be increasing integers >= 0, got {list(edges)}")


# Every slice name slice_masks can produce (a slice only exists when its columns are in the split).
SLICE_PATTERN = (r"query_(head|torso|tail)|product_(new|old|cold)|product_history(_\d+(_\d+|_plus)?)?"
                 r"|user_(history|no_history)|position_\d+")
SLICE_NAMES = ("query_head, query_torso, query_tail, product_new, product_old, product_cold, product_history "
               "(all its buckets), product_history_<lo>_<hi>, user_history, user_no_history, position_<k>")


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


def split_metrics(name: str, y: np.ndarray, p: np.ndarray, split: Split,
                  slices: dict[str, np.ndarray] | None, min_count: int = 100) -> dict[str, float]:
    """{"<split>/<metric>": v} plus {"<split>/<metric>/<slice>": v} for every slice big enough."""
    out = {f"{name}/{k}": v for k, v in metrics.evaluate(y, p, split.columns["request_id"],
                                                          split.columns["user_id"]).items()}
    for slice_name, values in metrics.slice_metrics(y, p, slices or {}, min_count=min_count).items():
        for k in SLICE_METRICS:
            out[f"{name}/{k}/{slice_name}"] = values[k]
    return {k: float(v) for k, v in out.items() if v == v}  # NaN (e.g. GAUC without mixed groups) is left out


def load_oracle(data_dir: str | Path, impression_ids: np.ndarray) -> np.ndarray | None:
    """The true click probability of each impression (hidden/impression_truth), or None if the world has none."""
    folder = Path(data_dir) / "hidden" / "impression_truth"
    if not folder.is_dir():
        return None
    files = sorted(folder.glob("*.parquet"))
    if not files:
        return None
    table = pa.concat_tables([pq.read_table(f, columns=["impression_id", "click_prob"]) for f in files])
    ids = table.column("impression_id").to_numpy()
    prob = table.column("click_prob").to_numpy().astype(np.float64)
    order = np.argsort(ids)
    ids, prob = ids[order], prob[order]
    pos = np.clip(np.searchsorted(ids, impression_ids), 0, len(ids) - 1)
    if len(ids) == 0 or not np.array_equal(ids[pos], impression_ids):
        return None  # the truth does not cover this split (another world)
    return prob[pos]


# ---------------------------------------------------------------------------------------------- calibration


def fit_calibration(logits: np.ndarray, y: np.ndarray, kind: str = "platt",
                    iterations: int = 50) -> tuple[float, float]:
    """(a, b) minimising the logloss of sigmoid(a * logit + b) on held-out rows (Newton's method); "bias"
    fits b alone (a = 1). Both are monotone, so AUC is unchanged."""
    z, y = np.asarray(logits, np.float64), np.asarray(y, np.float64)
    a, b = 1.0, 0.0
    for _ in range(iterations):
        p = sigmoid(a * z + b)
        w = np.maximum(p * (1.0 - p), 1e-12)
        if kind == "bias":
            step_b = np.sum(p - y) / np.sum(w)
            b -= step_b
            if abs(step_b) < 1e-10:
                break
            continue
        grad = np.array([np.sum((p - y) * z), np.sum(p - y)])
        hess = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]])
        step = np.linalg.solve(hess + 1e-9 * np.eye(2), grad)
        a, b = a - step[0], b - step[1]
        if np.max(np.abs(step)) < 1e-10:
            break
    if not (np.isfinite(a) and np.isfinite(b)) or a <= 0:  # never flip or flatten the ranking
        return fit_calibration(logits, y, "bias", iterations)
    return float(a), float(b)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) without overflow warnings."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(x, np.float64)))


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1.0 - 1e-12)
    return np.log(p) - np.log1p(-p)


# ---------------------------------------------------------------------------------------------- plots


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str):
    """ROC curves {label: (y, p)} on one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    for label, (y, p) in curves.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{label} (AUC {metrics.auc(y, p):.4f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def calibration_figure(y: np.ndarray, p: np.ndarray, title: str, n_bins: int = 20):
    """Reliability diagram on log axes (CTRs are small), from quantile bins of p."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean_pred, frac_pos, counts = metrics.calibration_curve(y, p, n_bins=n_bins)
    fig, ax = plt.subplots(figsize=(5, 5))
    lo = max(min(mean_pred.min(), max(frac_pos.min(), 1e-4)), 1e-4)
    ax.plot([lo, 1], [lo, 1], color="grey", linestyle=":")
    ax.plot(mean_pred, np.maximum(frac_pos, lo), marker="o")
    ax.set(xscale="log", yscale="log", xlabel="mean predicted P(click)", ylabel="observed CTR",
           title=f"{title}\ncalibration sum(p)/sum(y) = {metrics.calibration(y, p):.3f}")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------- comparison


def comparison_table(rows: dict[str, dict[str, float]], columns: list[str]) -> str:
    """A markdown table: one row per model; a column shows `mean ± std` when a `<key>_std` entry exists."""
    head = "| model | " + " | ".join(columns) + " |"
    lines = [head, "|" + "---|" * (len(columns) + 1)]
    for model, values in rows.items():
        cells = []
        for c in columns:
            v = values.get(c)
            if v is None or v != v:
                cells.append("")
                continue
            std = values.get(f"{c}_std")
            cells.append(f"{v:.4f} ± {std:.4f}" if std is not None and std == std else f"{v:.4f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _gain(values: dict[str, float], baseline: str, slice_name: str) -> tuple[float, float, float, float] | None:
    """(gain, seed std or NaN, ci_low or NaN, ci_high or NaN) of test/auc_gain_vs_<baseline>[/<slice>]."""
    key = f"test/auc_gain_vs_{baseline}" + (f"/{slice_name}" if slice_name else "")
    if key not in values:
        return None
    nan = float("nan")
    return (values[key], values.get(f"{key}_std", nan), values.get(f"{key}_ci_low", nan),
            values.get(f"{key}_ci_high", nan))


def gains_table(rows: dict[str, dict[str, float]], baseline: str, slices: tuple[str, ...]) -> str:
    """Markdown: each model's AUC gain over the baseline, overall and per slice, as `mean ± seed std [95% CI]`."""
    columns = ("",) + tuple(slices)
    lines = [f"| AUC gain vs {baseline} | " + " | ".join(c or "test" for c in columns) + " |",
             "|" + "---|" * (len(columns) + 1)]
    for name, values in rows.items():
        cells = []
        for c in columns:
            g = _gain(values, baseline, c)
            if g is None:
                cells.append("")
                continue
            gain, std, low, high = g
            cells.append(f"{gain:+.4f}" + (f" ± {std:.4f}" if std == std else "") +
                         (f" [{low:+.4f}, {high:+.4f}]" if low == low else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gains_figure(rows: dict[str, dict[str, float]], baseline: str, slices: tuple[str, ...], title: str):
    """The gains of gains_table as points with their 95% intervals: one row per slice, one colour per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ("",) + tuple(slices)
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.45 * len(columns) * max(1, len(rows)) ** 0.5))
    step = 0.8 / max(1, len(rows))
    for i, (name, values) in enumerate(rows.items()):
        ys, xs, lows, highs = [], [], [], []
        for j, c in enumerate(columns):
            g = _gain(values, baseline, c)
            if g is None:
                continue
            gain, _, low, high = g
            ys.append(j + (i - (len(rows) - 1) / 2) * step)
            xs.append(gain)
            lows.append(gain - low if low == low else 0.0)
            highs.append(high - gain if high == high else 0.0)
        ax.errorbar(xs, ys, xerr=[lows, highs], fmt="o", capsize=3, label=name)
    ax.axvline(0.0, color="grey", linestyle=":")
    ax.set_yticks(range(len(columns)), [c or "all of test" for c in columns])
    ax.invert_yaxis()
    ax.set(xlabel=f"test AUC - {baseline} test AUC", title=title)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig
