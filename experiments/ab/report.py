"""What the A/B notebooks (experiments/notebooks/) show, as functions: tables, plots and the headless runner.

The notebooks only call these (no analysis code in cells); everything reads an experiment log (see `log`) and,
for a simulated experiment, its truth.json (the true lifts) and interleaving.json. Nothing here reads the
simulator.

- `load_users(path)`: the log and its user table.
- `lift_summary(users, truth)`: the lift table with the true lift beside each estimate when known.
- `srm_verdict`, `cuped_effect`, `cumulative_lift`, `segment_lift`: the other tables.
- `lift_plot`, `cumulative_plot`, `segment_plot`, `users_needed_plot`: matplotlib figures.
- `execute_notebook(src, html, parameters)`: run a notebook headless (nbclient), parameters injected after the
  cell tagged `parameters`, and write a self-contained HTML copy (`notebook_html`: nbconvert's HTMLExporter,
  markdown rendered, images embedded, no script from the network).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.ab import analysis, log as ablog


def load_users(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(request-level log, user table) of the experiment log at `path` (parquet file or folder)."""
    frame = pd.read_parquet(path)
    return ablog.validate_log(frame), ablog.user_table(frame)


def load_json(path: str | Path | None) -> dict | None:
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else None


def lift_summary(users: pd.DataFrame, truth: dict | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """metric, cuped, control, treatment, rel_lift, rel_ci_low, rel_ci_high, p_value (+ true_rel_lift, covered)."""
    table = analysis.lift_table(users, alpha=alpha)
    columns = ["metric", "cuped", "control", "treatment", "rel_lift", "rel_ci_low", "rel_ci_high", "p_value"]
    table = table[columns].copy()
    if truth is not None:
        table["true_rel_lift"] = [truth[f"true_rel_lift_{m}"] for m in table["metric"]]
        true = table["true_rel_lift"]
        table["covered"] = (table["rel_ci_low"] <= true) & (true <= table["rel_ci_high"])
    return table


def srm_verdict(users: pd.DataFrame, treatment_share: float = 0.5, threshold: float = 0.001) -> str:
    p = analysis.srm(users, treatment_share=treatment_share)
    counts = users["arm"].value_counts().to_dict()
    verdict = "SAMPLE RATIO MISMATCH: do not trust the lifts" if p < threshold else "no sample ratio mismatch"
    return f"{verdict} (p = {p:.3g}; users per arm {counts}; expected treatment share {treatment_share})"


def cuped_effect(users: pd.DataFrame) -> pd.DataFrame:
    """Per metric: CI width of the relative lift without and with CUPED, and the variance reduction."""
    table = analysis.lift_table(users, cuped=(False, True))
    table["ci_width"] = table["rel_ci_high"] - table["rel_ci_low"]
    wide = table.pivot(index="metric", columns="cuped", values=["rel_lift", "ci_width"])
    out = pd.DataFrame({"rel_lift": wide[("rel_lift", False)], "rel_lift_cuped": wide[("rel_lift", True)],
                        "ci_width": wide[("ci_width", False)], "ci_width_cuped": wide[("ci_width", True)]})
    out["variance_reduction"] = 1 - (out["ci_width_cuped"] / out["ci_width"]) ** 2
    return out.reset_index()


def cumulative_lift(log: pd.DataFrame, metric: str = "ctr", cuped: bool = False) -> pd.DataFrame:
    """The lift as the experiment would have read it at the end of each day: day, users, rel_lift, CI."""
    days = log["ts"].dt.floor("D")
    rows = []
    for day in sorted(days.unique()):
        users = ablog.user_table(log[days <= day])
        if users["arm"].nunique() < 2:
            continue
        result = analysis.analyse(users, cuped=cuped)[metric]
        rows.append({"day": day, "users": len(users), "rel_lift": result.rel_effect_size,
                     "rel_ci_low": result.rel_effect_size_ci_lower, "rel_ci_high": result.rel_effect_size_ci_upper})
    return pd.DataFrame(rows)


def segment_lift(log: pd.DataFrame, column: str, metric: str = "ctr") -> pd.DataFrame:
    """The lift within each value of a segment column of the log (e.g. query_segment, user_history, new_products)."""
    rows = []
    for value, part in log.groupby(column, sort=True):
        users = ablog.user_table(part.drop(columns=[column]))
        if users["arm"].nunique() < 2 or (users.groupby("arm")["impressions"].sum() == 0).any():
            continue
        result = analysis.analyse(users)[metric]
        rows.append({"segment": f"{column}={value}", "users": len(users),
                     "impressions": int(users["impressions"].sum()),
                     "rel_lift": result.rel_effect_size, "rel_ci_low": result.rel_effect_size_ci_lower,
                     "rel_ci_high": result.rel_effect_size_ci_upper, "p_value": result.pvalue})
    return pd.DataFrame(rows)


SEGMENTS = ("query_segment", "user_history", "new_products")  # the experiment_log's optional segment columns


def segment_lifts(log: pd.DataFrame, metric: str = "ctr") -> pd.DataFrame:
    """`segment_lift` for every segment column (SEGMENTS) the log carries; a log without any gives an empty frame."""
    columns = [c for c in SEGMENTS if c in log.columns]
    parts = [segment_lift(log, c, metric) for c in columns]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# ----------------------------------------------------------------------------------------------------------------
# plots


def _plt():
    import matplotlib.pyplot as plt  # inline in a notebook kernel; Agg (the headless default) elsewhere

    return plt


def lift_plot(lifts: pd.DataFrame, truth: dict | None = None):
    """Relative lift with its interval per (metric, CUPED), the true lift as a cross when known."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    labels = [f"{m}{' +CUPED' if c else ''}" for m, c in zip(lifts["metric"], lifts["cuped"])]
    y = np.arange(len(lifts))
    xerr = [lifts["rel_lift"] - lifts["rel_ci_low"], lifts["rel_ci_high"] - lifts["rel_lift"]]
    ax.errorbar(lifts["rel_lift"], y, xerr=xerr, fmt="o", capsize=4, label="estimate, 95% CI")
    if truth is not None:
        ax.scatter([truth[f"true_rel_lift_{m}"] for m in lifts["metric"]], y, marker="x", color="red", zorder=3,
                   label="true lift")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(y, labels)
    ax.set_xlabel("relative lift (treatment / control - 1)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def cumulative_plot(cumulative: pd.DataFrame, true_lift: float | None = None, metric: str = "ctr"):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(cumulative["day"], cumulative["rel_lift"], marker="o", label="estimate")
    ax.fill_between(cumulative["day"], cumulative["rel_ci_low"], cumulative["rel_ci_high"], alpha=0.25, label="95% CI")
    if true_lift is not None:
        ax.axhline(true_lift, color="red", ls="--", label="true lift")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_ylabel(f"cumulative relative {metric} lift")
    ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def segment_plot(segments: pd.DataFrame, metric: str = "ctr"):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * max(len(segments), 1)))
    y = np.arange(len(segments))
    if len(segments):
        xerr = [segments["rel_lift"] - segments["rel_ci_low"], segments["rel_ci_high"] - segments["rel_lift"]]
        ax.errorbar(segments["rel_lift"], y, fmt="o", capsize=4, xerr=xerr)
        ax.set_yticks(y, segments["segment"])
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel(f"relative {metric} lift per segment")
    fig.tight_layout()
    return fig


def users_needed_table(interleaving: dict) -> pd.DataFrame:
    u = interleaving["users_needed"]
    return pd.DataFrame([
        {"design": "A/B (both arms)", "effect": u["ab_effect"], "users_needed": u["ab_total"]},
        {"design": "interleaving", "effect": u["interleaving_effect"], "users_needed": u["interleaving"]},
    ])


def users_needed_plot(interleaving: dict):
    plt = _plt()
    table = users_needed_table(interleaving)
    u = interleaving["users_needed"]
    fig, ax = plt.subplots(figsize=(5, 2.5))
    ax.barh(table["design"], table["users_needed"])
    ax.set_xscale("log")
    ax.set_xlabel("users needed (80% power, 5% two-sided)")
    # The percentile interval, not the bootstrap SE: a resample whose A/B effect is near zero needs near-infinite
    # users, which blows the SE up (the demo once printed ± 6.8e8) while the interval stays readable.
    ax.set_title(f"A/B needs {u['ratio']:.1f}x the users (95% bootstrap interval {u['ratio_ci'][0]:.1f}-"
                 f"{u['ratio_ci'][1]:.1f}x)", fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------------------
# headless execution and HTML


def execute_notebook(src: str | Path, html_path: str | Path, parameters: dict, timeout: int = 600,
                     executed_path: str | Path | None = None) -> Path:
    """Execute notebook `src` with `parameters` injected after its `parameters` cell; write it as HTML."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(src), as_version=4)
    lines = ["# injected parameters"] + [f"{k} = {v!r}" for k, v in parameters.items()]
    index = next((i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), -1)
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": ["injected-parameters"]}))
    # The kernel's own start-up warnings (ipykernel's "running over TCP without encryption") are not the report's.
    NotebookClient(nb, timeout=timeout, kernel_name="python3", extra_arguments=["--IPKernelApp.log_level=ERROR"],
                   resources={"metadata": {"path": str(Path.cwd())}}).execute()
    if executed_path is not None:
        nbformat.write(nb, str(executed_path))
    html_path = Path(html_path)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(notebook_html(nb, title=Path(src).stem, path=Path(src).parent), encoding="utf-8")
    return html_path


# The lab template less its <script src=...> tags (require.js, MathJax, mermaid from a CDN): the page must open offline.
_TEMPLATE = "ab_report.html.j2"
_TEMPLATE_SOURCE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def notebook_html(nb, title: str = "notebook", path: str | Path | None = None) -> str:
    """A self-contained HTML page of an executed notebook, by nbconvert's HTMLExporter (lab template).

    Markdown is rendered (headings, lists, tables, code), outputs as Jupyter shows them; figures and any image a
    markdown cell links (relative to `path`, the notebook's folder) are embedded as base64, CSS is inlined, and no
    script is loaded from the network.
    """
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", extra_loaders=[DictLoader({_TEMPLATE: _TEMPLATE_SOURCE})],
                            template_file=_TEMPLATE, embed_images=True)
    resources = {"metadata": {"name": title, "path": str(path or Path.cwd())}}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    return body
