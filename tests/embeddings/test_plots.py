"""DashCLIP's pictures are written as PNG files (t-SNE, the slow one, runs in test_pipeline.py's evaluation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from embeddings.plots import plot_cosines, plot_history


def _size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_training_curves_get_a_validation_panel_only_with_validation_metrics(tmp_path):
    history = [{"step": s, "loss": 1.0 / (s + 1), "itc": 0.5 / (s + 1), "temp": 0.07} for s in range(120)]
    plot_history(history, [], tmp_path / "plain.png")
    plot_history(history, [{"epoch": 1, "val/aisle_acc": 0.4}, {"epoch": 2, "val/aisle_acc": 0.6}],
                 tmp_path / "with_val.png")
    assert _size(tmp_path / "plain.png") == (600, 360)
    assert _size(tmp_path / "with_val.png") == (1100, 360)  # a second panel


def test_cosine_histograms_one_panel_per_encoder(tmp_path):
    rng = np.random.default_rng(0)
    pairs = pd.DataFrame({"label": rng.integers(3, size=200), "cos": rng.uniform(-1, 1, size=200)})
    plot_cosines({"offshelf": pairs, "stage1": pairs, "stage2": pairs}, tmp_path / "cos.png")
    assert _size(tmp_path / "cos.png") == (1080, 320)
