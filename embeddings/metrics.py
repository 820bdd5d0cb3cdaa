"""How good embeddings are, from arrays: a linear probe, aisle accuracy, retrieval recall / nDCG, cosine AUC.

Pure functions of numpy arrays (the probe fits with torch); the evaluation entry point (embeddings.evaluate) and
the validation passes during training (embeddings.train) call them (docs/design.md section 9).
"""

from __future__ import annotations

import numpy as np
import torch

from core.metrics import auc

K = 10  # the cut-off of recall@k and nDCG@k


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, l2: float = 1e-3,
                 iters: int = 100) -> np.ndarray:
    """Multinomial logistic regression on standardised features (full-batch L-BFGS, deterministic); returns the
    predicted classes of x_test. Standardising matters: unit-norm embeddings have tiny coordinates, and an
    unscaled regularised probe underfits them."""
    classes, y = np.unique(y_train, return_inverse=True)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt = torch.from_numpy(((x_train - mean) / std).astype(np.float32))
    yt = torch.from_numpy(y)
    w = torch.zeros(xt.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        scores = torch.from_numpy(((x_test - mean) / std).astype(np.float32)) @ w + b
    return classes[scores.argmax(1).numpy()]


def aisle_accuracy(p_emb: np.ndarray, aisles: np.ndarray, train_mask: np.ndarray) -> float:
    """Accuracy on the rows outside train_mask of a linear probe fitted on the rows inside it."""
    predicted = linear_probe(p_emb[train_mask], aisles[train_mask], p_emb[~train_mask])
    return float((predicted == aisles[~train_mask]).mean())


def pair_features(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """[p*q, |p-q|, cos(p, q)] of row-aligned product and query embeddings [n, D] -> [n, 2D + 1]."""
    cos = (p * q).sum(1, keepdims=True)
    return np.hstack([p * q, np.abs(p - q), cos])  # [n, 2D + 1]


def retrieval(p_emb: np.ndarray, q_emb: np.ndarray, judgments: list[dict[int, int]], k: int = K) -> tuple[float, float]:
    """Mean recall@k (relevant = gain 2; denominator min(#relevant, k)) and nDCG@k (gains 2^g - 1) of queries
    [Q, D] retrieving from all products [N, D] by cosine; queries without a relevant product are skipped."""
    scores = q_emb @ p_emb.T  # [Q, N]
    top = np.argpartition(-scores, k, axis=1)[:, :k]  # [Q, k] unordered
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1)  # [Q, k] best first
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recalls, ndcgs = [], []
    for row, gains in zip(top, judgments):
        relevant = {i for i, g in gains.items() if g == 2}
        if not relevant:
            continue
        recalls.append(len(relevant & set(row.tolist())) / min(len(relevant), k))
        dcg = sum(discounts[r] * (2 ** gains.get(int(i), 0) - 1) for r, i in enumerate(row))
        ideal = sorted(gains.values(), reverse=True)[:k]
        ndcgs.append(dcg / sum(discounts[r] * (2**g - 1) for r, g in enumerate(ideal)))
    return float(np.mean(recalls)) if recalls else float("nan"), float(np.mean(ndcgs)) if ndcgs else float("nan")


def auc_2v0(labels: np.ndarray, cos: np.ndarray) -> float:
    """AUC of cos separating label-2 from label-0 pairs (label-1 pairs left out)."""
    keep = labels != 1
    return auc((labels[keep] == 2).astype(np.int8), cos[keep])


def _groups(group_ids: np.ndarray) -> list[np.ndarray]:
    """Row indices of each group, groups in order of first appearance, rows in their original order."""
    _, first, inverse = np.unique(np.asarray(group_ids), return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse))[:-1]
    groups = np.split(order, bounds)
    return [groups[g] for g in np.argsort(first)]


def judged_ndcg(group_ids: np.ndarray, gains: np.ndarray, scores: np.ndarray, k: int = K) -> float:
    """Mean nDCG@k over queries (group_ids) of their judged items ranked by score: DCG = sum gain / log2(rank + 1),
    gains as given (ESCI: E 1.0, S 0.1, C 0.01, I 0), normalised by the ideal order of the same judged items; ties
    keep the input order; queries whose judged items all have gain 0 are skipped."""
    gains, scores = np.asarray(gains, np.float64), np.asarray(scores, np.float64)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    out = []
    for rows in _groups(group_ids):
        g = gains[rows]
        ideal = np.sort(g)[::-1][:k]
        idcg = float((ideal * discounts[: len(ideal)]).sum())
        if idcg <= 0:
            continue
        top = g[np.argsort(-scores[rows], kind="stable")][:k]
        out.append(float((top * discounts[: len(top)]).sum()) / idcg)
    return float(np.mean(out)) if out else float("nan")


def judged_recall(group_ids: np.ndarray, relevant: np.ndarray, scores: np.ndarray, k: int = K) -> float:
    """Mean over queries with a relevant judged item of the share of their relevant items in their top k judged
    items by score (ties keep the input order)."""
    relevant, scores = np.asarray(relevant, bool), np.asarray(scores, np.float64)
    out = []
    for rows in _groups(group_ids):
        r = relevant[rows]
        if r.any():
            out.append(float(r[np.argsort(-scores[rows], kind="stable")][:k].sum() / r.sum()))
    return float(np.mean(out)) if out else float("nan")
