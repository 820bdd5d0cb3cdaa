"""Calibration of pCTR scores after training: P = sigmoid(a * logit + b) fitted on held-out rows, and the
overflow-safe sigmoid and logit the models, the baselines and the evaluation share (numpy only)."""

from __future__ import annotations

import numpy as np


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
