"""DashCLIP's pictures, as PNG files: training curves (embeddings.train), cosine distributions per relevance label
and a t-SNE of product embeddings by aisle (embeddings.evaluate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    # matplotlib (and its Agg backend) only in a process that draws: training stages run from benchmarks and tests
    # import this module without ever plotting.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: list[dict], evals: list[dict], path: Path) -> None:
    """Training curves (per step, smoothed) and validation metrics (per epoch) as one PNG."""
    plt = _pyplot()
    keys = [k for k in history[0] if k not in ("step", "temp", "loss")]
    val_keys = sorted({k for e in evals for k in e if k != "epoch"})
    fig, axes = plt.subplots(1, 2 if val_keys else 1, figsize=(11 if val_keys else 6, 3.6), squeeze=False)
    steps = np.array([h["step"] for h in history])
    window = max(1, len(history) // 50)
    for k in keys:
        values = np.convolve([h[k] for h in history], np.ones(window) / window, mode="valid")
        axes[0][0].plot(steps[window - 1 :], values, label=k, lw=1)
    axes[0][0].set_xlabel("step")
    axes[0][0].legend(fontsize=8)
    axes[0][0].set_title("training losses")
    if val_keys:
        for k in val_keys:
            pts = [(e["epoch"], e[k]) for e in evals if k in e]
            axes[0][1].plot(*zip(*pts), marker="o", label=k)
        axes[0][1].set_xlabel("epoch")
        axes[0][1].legend(fontsize=8)
        axes[0][1].set_title("validation (held-out products / queries)")
    _save(plt, fig, path)


def plot_cosines(pairs_by_encoder: dict[str, pd.DataFrame], path: Path) -> None:
    """Per encoder, histograms of cos(product, query) of the held-out pairs (columns label, cos) by label."""
    plt = _pyplot()
    n = len(pairs_by_encoder)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    bins = np.linspace(-1, 1, 51)
    for ax, (name, pairs) in zip(axes[0], pairs_by_encoder.items()):
        for label, colour in ((0, "tab:red"), (1, "tab:orange"), (2, "tab:green")):
            ax.hist(pairs.cos[pairs.label == label], bins=bins, alpha=0.5, density=True, color=colour,
                    label=f"label {label}")
        ax.set_title(name)
        ax.set_xlabel("cos(product, query)")
    axes[0][0].legend(fontsize=8)
    _save(plt, fig, path)


def plot_tsne(emb_by_encoder: dict[str, np.ndarray], aisles: np.ndarray, path: Path, n: int = 1200,
              seed: int = 0) -> None:
    """Per encoder, a t-SNE map of a seeded sample of n product embeddings coloured by aisle."""
    from sklearn.manifold import TSNE  # slow to import (scipy's sparse graph code); only this picture needs it

    plt = _pyplot()
    idx = np.random.default_rng(seed).choice(len(aisles), size=min(n, len(aisles)), replace=False)
    names = sorted(set(aisles[idx]))
    colour = np.array([names.index(a) for a in aisles[idx]])
    k = len(emb_by_encoder)
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 4.2), squeeze=False)
    for ax, (name, emb) in zip(axes[0], emb_by_encoder.items()):
        perplexity = min(30.0, max(2.0, (len(idx) - 1) / 3))
        xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(emb[idx])
        ax.scatter(xy[:, 0], xy[:, 1], c=colour, cmap="tab20", s=4)
        ax.set_title(f"{name}: products by aisle")
        ax.set_xticks([])
        ax.set_yticks([])
    _save(plt, fig, path)


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
