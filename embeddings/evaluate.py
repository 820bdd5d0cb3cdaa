"""DashCLIP evaluation, each encoder against the off-the-shelf one (the same model before any training).

    python -m embeddings.evaluate --config experiments/configs/embeddings/demo.yaml --data data/demo \
        --encoder stage1=data/demo/embeddings/checkpoints/stage1 --encoder stage2=.../stage2 [...]

Metrics (names `<encoder>/<metric>`, DESIGN.md section 9), on held-out products and held-out queries:
- aisle_acc: a linear probe (logistic regression) on product embeddings, trained on training products;
- relevance_f1: macro-F1 of a logistic regression on [p*q, |p-q|, cos(p, q)] predicting the 0/1/2 label;
- recall_at_10 / ndcg_at_10: each held-out query retrieves from the whole catalog by cosine; relevant products are
  the ones labelled 2 for it (graded gains 2/1 for nDCG);
- cos_auc_2v0: AUC of cos(p, q) separating label-2 from label-0 pairs.
Plots: cosine distributions per label, and a t-SNE of product embeddings coloured by aisle.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from embeddings import data as D
from embeddings.model import DashClip, build_model, load_checkpoint, load_tokenizer, tokenize
from embeddings.train import EmbeddingConfig, product_hidden_all
from experiments.config import add_config_args, config_from_args
from feature_store.schema import read_table
from ranking.metrics import auc

METRICS = ("aisle_acc", "relevance_f1", "recall_at_10", "ndcg_at_10", "cos_auc_2v0")


@torch.no_grad()
def embed_products(model: DashClip, catalog: D.Catalog, tokenizer, max_len: int) -> np.ndarray:
    ids, mask = tokenize(tokenizer, catalog.titles, max_len)
    hidden = product_hidden_all(model, catalog, ids, mask)
    return torch.nn.functional.normalize(model.product_proj(hidden), dim=-1).numpy()  # [N, D]


@torch.no_grad()
def embed_queries(model: DashClip, texts: list[str], tokenizer, max_len: int, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(texts), batch_size):
        ids, mask = tokenize(tokenizer, texts[s : s + batch_size], max_len)
        out.append(model.encode_query(ids, mask))
    return torch.cat(out).numpy() if out else np.zeros((0, model.embed_dim), np.float32)


@dataclass
class EvalData:
    catalog: D.Catalog
    queries: pd.DataFrame
    relevance: pd.DataFrame
    holdout: D.Holdout
    label_source: str  # "golden" (noise-free labels) or "labels" (the training labels)


def aisle_accuracy(p_emb: np.ndarray, aisles: np.ndarray, train_mask: np.ndarray) -> float:
    probe = LogisticRegression(max_iter=500, C=1.0).fit(p_emb[train_mask], aisles[train_mask])
    return float(probe.score(p_emb[~train_mask], aisles[~train_mask]))


def pair_features(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    cos = (p * q).sum(1, keepdims=True)
    return np.hstack([p * q, np.abs(p - q), cos])


def retrieval(p_emb: np.ndarray, q_emb: np.ndarray, gains: list[dict[int, int]], k: int = 10) -> tuple[float, float]:
    """Mean recall@k (relevant = gain 2) and nDCG@k (graded gains) of queries retrieving from all products."""
    scores = q_emb @ p_emb.T  # [Q, N]
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recalls, ndcgs = [], []
    for row, g in zip(top, gains):
        relevant = {i for i, v in g.items() if v == 2}
        if not relevant:
            continue
        recalls.append(len(relevant & set(row.tolist())) / min(len(relevant), k))
        dcg = sum(discounts[r] * (2 ** g.get(int(i), 0) - 1) for r, i in enumerate(row))
        ideal = sorted(g.values(), reverse=True)[:k]
        idcg = sum(discounts[r] * (2**v - 1) for r, v in enumerate(ideal))
        ndcgs.append(dcg / idcg)
    return float(np.mean(recalls)), float(np.mean(ndcgs))


def evaluate_embeddings(p_emb: np.ndarray, q_emb_of: dict[int, np.ndarray], ev: EvalData) -> tuple[dict, pd.DataFrame]:
    """All metrics for one encoder; also returns the held-out pairs with their cosine (for plots)."""
    cat = ev.catalog
    row_of = {int(p): i for i, p in enumerate(cat.product_ids)}
    rel = ev.relevance[ev.relevance.product_id.isin(row_of)]
    held = rel.query_id.isin(ev.holdout.heldout_queries).to_numpy()
    p = p_emb[rel.product_id.map(row_of).to_numpy()]
    q = np.stack([q_emb_of[int(x)] for x in rel.query_id])
    feats, labels = pair_features(p, q), rel.label.to_numpy()
    clf = LogisticRegression(max_iter=500, C=1.0).fit(feats[~held], labels[~held])
    f1 = f1_score(labels[held], clf.predict(feats[held]), average="macro")
    cos = (p * q).sum(1)
    pairs = pd.DataFrame({"label": labels[held], "cos": cos[held]})
    two_vs_zero = pairs[pairs.label != 1]
    heldout_rel = rel[held]
    gains = [dict(zip(g.product_id.map(row_of), g.label)) for _, g in heldout_rel.groupby("query_id")]
    q_ids = [int(x) for x, _ in heldout_rel.groupby("query_id")]
    recall, ndcg = retrieval(p_emb, np.stack([q_emb_of[x] for x in q_ids]), gains)
    metrics = {
        "aisle_acc": aisle_accuracy(p_emb, cat.aisles, ev.holdout.train_products),
        "relevance_f1": float(f1),
        "recall_at_10": recall,
        "ndcg_at_10": ndcg,
        "cos_auc_2v0": auc((two_vs_zero.label == 2).astype(int).to_numpy(), two_vs_zero.cos.to_numpy()),
    }
    return metrics, pairs


def evaluate_model(model: DashClip, ev: EvalData, cfg: EmbeddingConfig) -> tuple[dict, pd.DataFrame, np.ndarray]:
    tokenizer = load_tokenizer(cfg.model)
    p_emb = embed_products(model, ev.catalog, tokenizer, cfg.model.max_title_len)
    qids = np.unique(ev.relevance.query_id.to_numpy())
    texts = ev.queries.set_index("query_id").loc[qids, "query_text"].tolist()
    q_emb = embed_queries(model, texts, tokenizer, cfg.model.max_query_len)
    metrics, pairs = evaluate_embeddings(p_emb, dict(zip(qids.tolist(), q_emb)), ev)
    return metrics, pairs, p_emb


def load_eval_data(cfg: EmbeddingConfig, data_dir: Path) -> EvalData:
    """Evaluation pairs. Where a golden set exists (the simulator's hidden/relevance_truth: the labels before the
    labeller's noise) the metrics use it, as a team would use human-verified labels; otherwise the labels."""
    from embeddings.train import stage2_inputs

    catalog, queries, relevance, holdout = stage2_inputs(cfg, data_dir)
    golden = Path(data_dir) / "hidden" / "relevance_truth"
    if golden.is_dir():
        truth = read_table("relevance_truth", golden).to_pandas()
        relevance = relevance.drop(columns="label").merge(truth, on=["query_id", "product_id"], validate="one_to_one")
        relevance = relevance.rename(columns={"true_label": "label"})
    return EvalData(catalog, queries, relevance, holdout, "golden" if golden.is_dir() else "labels")


def offshelf_model(cfg: EmbeddingConfig) -> DashClip:
    """The encoder before any training, evaluated the way stage 2 would start from it."""
    model = build_model(cfg.model, seed=cfg.seed)
    model.start_stage2()
    return model


def load_encoder(path: Path, cfg: EmbeddingConfig) -> DashClip:
    model, _ = load_checkpoint(path, expected_cfg=cfg.model)
    import json

    if json.loads((Path(path) / "model_config.json").read_text()).get("stage") == 1:
        model.start_stage2()  # a stage-1 model's query side is its title encoder
    return model


# ----------------------------------------------------------------------------------------------------------------
# plots


def plot_cosines(pairs_by_encoder: dict[str, pd.DataFrame], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(pairs_by_encoder)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    for ax, (name, pairs) in zip(axes[0], pairs_by_encoder.items()):
        for label, colour in ((0, "tab:red"), (1, "tab:orange"), (2, "tab:green")):
            ax.hist(pairs.cos[pairs.label == label], bins=40, alpha=0.5, density=True, color=colour, label=f"label {label}")
        ax.set_title(name)
        ax.set_xlabel("cos(product, query)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tsne(emb_by_encoder: dict[str, np.ndarray], aisles: np.ndarray, path: Path, n: int = 1500, seed: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    idx = np.random.default_rng(seed).choice(len(aisles), size=min(n, len(aisles)), replace=False)
    names = sorted(set(aisles[idx]))
    colour = np.array([names.index(a) for a in aisles[idx]])
    k = len(emb_by_encoder)
    fig, axes = plt.subplots(1, k, figsize=(4.5 * k, 4.5), squeeze=False)
    for ax, (name, emb) in zip(axes[0], emb_by_encoder.items()):
        xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=30).fit_transform(emb[idx])
        ax.scatter(xy[:, 0], xy[:, 1], c=colour, cmap="tab20", s=4)
        ax.set_title(f"{name}: products by aisle")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(results: dict[str, dict]) -> str:
    head = f"{'encoder':<12}" + "".join(f"{m:>14}" for m in METRICS)
    rows = [f"{name:<12}" + "".join(f"{r[m]:>14.4f}" for m in METRICS) for name, r in results.items()]
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embeddings.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--encoder", action="append", default=[], metavar="NAME=CHECKPOINT",
                        help="an encoder to evaluate (repeatable); offshelf is always included")
    parser.add_argument("--out", type=Path, default=None, help="folder for plots and the table (default <data>/embeddings/eval)")
    parser.add_argument("--no-tsne", action="store_true")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(EmbeddingConfig, args)
    encoders = {"offshelf": None}
    for spec in args.encoder:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            parser.error(f"--encoder expects NAME=CHECKPOINT, got {spec!r}")
        encoders[name] = Path(path)
    out = args.out or args.data / "embeddings" / "eval"
    out.mkdir(parents=True, exist_ok=True)
    ev = load_eval_data(cfg, args.data)
    results, pairs, embs = {}, {}, {}
    for name, path in encoders.items():
        model = offshelf_model(cfg) if path is None else load_encoder(path, cfg)
        results[name], pairs[name], embs[name] = evaluate_model(model, ev, cfg)
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[name].items()), flush=True)
    table = format_table(results)
    print(f"evaluation labels: {ev.label_source}")
    print(table)
    (out / "comparison.txt").write_text(table + "\n")
    plot_cosines(pairs, out / "cosine_by_label.png")
    if not args.no_tsne:
        plot_tsne({k: v for k, v in embs.items() if k in ("offshelf", "stage1", "stage2")} or embs,
                  ev.catalog.aisles, out / "tsne_aisles.png", seed=cfg.seed)

    import mlflow

    from experiments.tracking import setup_mlflow

    setup_mlflow("dashclip-embeddings")
    with mlflow.start_run(run_name=f"{cfg.name}/evaluate"):
        mlflow.set_tags({"stage": "evaluate", "data": str(args.data), "eval_labels": ev.label_source})
        mlflow.log_metrics({f"{name}/{k}": v for name, r in results.items() for k, v in r.items()})
        mlflow.log_artifacts(str(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
