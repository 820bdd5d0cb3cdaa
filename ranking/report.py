"""What a comparison reports: the MLflow metric keys of a split, the oracle, the comparison and gains tables, and
the figures logged with them.

Keys follow docs/design.md, section 9: `<split>/<metric>` and `<split>/<metric>/<slice>` (slices: ranking/slices.py).
Metric definitions are `core.metrics` (numpy), the same ones benchmarks and notebooks use.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core import metrics
from ranking.training_set import Split

SLICE_METRICS = ("auc", "logloss", "ne", "calibration", "count")
HEADLINE = ("auc", "logloss", "ne", "calibration", "gauc_request", "gauc_user")


def split_metrics(name: str, y: np.ndarray, p: np.ndarray, split: Split,
                  slices: dict[str, np.ndarray] | None, min_count: int = 100) -> dict[str, float]:
    """{"<split>/<metric>": v} plus {"<split>/<metric>/<slice>": v} for every slice big enough."""
    out = {f"{name}/{k}": v for k, v in metrics.evaluate(y, p, split.columns.get("request_id"),
                                                          split.columns.get("user_id")).items()}
    for slice_name, values in metrics.slice_metrics(y, p, slices or {}, min_count=min_count).items():
        for k in SLICE_METRICS:
            out[f"{name}/{k}/{slice_name}"] = values[k]
    return {k: float(v) for k, v in out.items() if v == v}  # NaN (e.g. GAUC without mixed groups) is left out


def skipped_evaluations(split: Split, skipped_slices: dict[str, str], oracle_note: str) -> dict[str, str]:
    """{metric or slice family: why it was not computed}: what the comparison table lists below itself."""
    out = {}
    for metric, column in (("gauc_request", "request_id"), ("gauc_user", "user_id")):
        if column not in split.columns:
            out[metric] = f"no {column} column"
    out.update({f"slices {k}": v for k, v in skipped_slices.items()})
    if oracle_note:
        out["(oracle)"] = oracle_note
    return out


def skipped_note(skipped: dict[str, str]) -> str:
    """The lines printed under the comparison table: each skipped metric and why."""
    if not skipped:
        return ""
    return "Skipped (the training set lacks what they need):\n" + "\n".join(
        f"- {k}: {v}" for k, v in skipped.items())


def oracle_world(metadata: dict, folder: str | Path) -> Path | None:
    """The world a training set was built from, as its metadata.json records it, or None when it records none.

    The feature store records `data_dir` (the world the set was built from: <world>/training_sets/<version>/, so
    the world is the folder's grandparent when the set still lies there); `python -m ranking.prepare` records
    `"world": null` (a user's click log has no ground truth). Never a default path: a user's rows are never joined
    to the demo world's oracle by impression_id."""
    if "world" in metadata:
        return Path(metadata["world"]) if metadata["world"] else None
    if not metadata.get("data_dir"):
        return None
    folder = Path(folder)
    if folder.parent.name == "training_sets":
        return folder.parent.parent
    return Path(metadata["data_dir"])


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


# ---------------------------------------------------------------------------------------------- figures


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files, no display), imported on the first figure: runs with
    plots=false and the processes that only read tables never load matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def close_figures() -> None:
    """Free every figure once it is logged."""
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str):
    """ROC curves {label: (y, p)} on one figure."""
    from sklearn.metrics import roc_curve  # scikit-learn only where a figure is drawn

    plt = _pyplot()
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
    plt = _pyplot()
    mean_pred, frac_pos, counts = metrics.calibration_curve(y, p, n_bins=n_bins)
    fig, ax = plt.subplots(figsize=(5, 5))
    lo = max(min(mean_pred.min(), max(frac_pos.min(), 1e-4)), 1e-4)
    ax.plot([lo, 1], [lo, 1], color="grey", linestyle=":")
    ax.plot(mean_pred, np.maximum(frac_pos, lo), marker="o")
    ax.set(xscale="log", yscale="log", xlabel="mean predicted P(click)", ylabel="observed CTR",
           title=f"{title}\ncalibration sum(p)/sum(y) = {metrics.calibration(y, p):.3f}")
    fig.tight_layout()
    return fig


def gains_figure(rows: dict[str, dict[str, float]], baseline: str, slices: tuple[str, ...], title: str):
    """The gains of gains_table as points with their 95% intervals: one row per slice, one colour per model."""
    plt = _pyplot()
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
