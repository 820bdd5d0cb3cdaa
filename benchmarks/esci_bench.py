"""DashCLIP stage 2 on real shopping queries (Amazon ESCI): does it beat the off-the-shelf sentence encoder?

    python -m benchmarks.esci_bench [--data-root DIR] [--config experiments/configs/embeddings/text.yaml]
                                    [--folds 0,1,2,3,4] [--seeds 0,1,2] [--max-queries N] [--max-steps K]
                                    [--offshelf-only] [key=value ...]

--data-root: esci_opensearch_150q in the shared data folder beside the repository (DASHCLIP_PUBLIC_DATA points
elsewhere, as in tests/conftest.py): 150 real queries, 6,678 human ESCI judgments (Exact / Substitute / Complement /
Irrelevant) and the product text of every judged product (PROVENANCE.md there). Skipped (exit 0, reason printed)
when the folder is absent.

The documented route: per fold, the data become the project's raw tables in a temporary folder (never in the
repository): `products` (product_id, title, brand; ids numbered in ASIN order over the whole file; the products the
training queries judged), `queries` (the training folds' queries), `relevance` (their judgments, label Exact 2,
Substitute 1, Complement and Irrelevant 0: LABELS; no source column). The products' `query_id` field lists the ESCI queries each product was
judged for: it is never read (PROVENANCE.md's leakage warning). Stage 2 (embeddings.train.train_stage2, the text
config: all-MiniLM-L6-v2 with mean pooling and an identity projection, so step 0 is the shipped model) trains on
them; its own validation split (by query, heldout_query_share of the training queries) picks the best checkpoint.

Cross-validation over queries: fold = zlib.crc32(query_text.encode()) % 5 (29 / 47 / 26 / 22 / 26 queries); each
fold's queries are scored by a model trained on the other four, for each seed. Metrics on the fold's judged pairs,
scored by cosine: `auc` (Exact vs Irrelevant, pooled over the fold's queries), `ndcg10` (per query over its judged
products, ESCI gains E 1.0 / S 0.1 / C 0.01 / I 0, mean over queries), `recall10` (the share of a query's Exact
products in its top 10 judged products, mean over queries). Encoders: `offshelf` (all-MiniLM-L6-v2 as shipped,
mean pooling, L2 norm, 256 tokens: what sentence-transformers computes; no training, so one number per fold) and
`stage2`. Reported: per fold (stage 2: mean over seeds), in total (mean and sample standard deviation over folds;
and "all": every query scored by its own fold's model, pooled, per seed), and the paired per-fold differences
stage2 - offshelf with their mean and 95% t-interval over folds x seeds, plus wall times. One JSON line per number
through benchmarks.common.record (benchmarks/results/esci.jsonl), a markdown summary in benchmarks/results/esci.md.
Reference for the offshelf row (REFERENCE: measured with sentence-transformers' own code): all 150 queries AUC
0.705, NDCG@10 0.659; per fold in REFERENCE_FOLDS.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import math
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

from benchmarks import common  # noqa: E402
from core.config import add_config_args, config_from_args  # noqa: E402
from core.metrics import auc  # noqa: E402
from embeddings.checkpoint import load_checkpoint  # noqa: E402
from embeddings.config import EmbeddingConfig, set_threads  # noqa: E402
from embeddings.data import Catalog  # noqa: E402
from embeddings.encode import embed_products, embed_queries, embed_sentences  # noqa: E402
from embeddings.metrics import judged_ndcg, judged_recall  # noqa: E402
from embeddings.pretrained import load_minilm_encoder, load_tokenizer, minilm_max_seq_length  # noqa: E402
from embeddings.train import train_stage2  # noqa: E402
from feature_store.schema import write_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DASHCLIP_PUBLIC_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_DATA = SHARED_DATA / "esci_opensearch_150q"
DEFAULT_CONFIG = ROOT / "experiments" / "configs" / "embeddings" / "text.yaml"
PRODUCTS_FILE = Path("dashboards-search-relevance") / "ubi_ecommerce_products.json.gz"
JUDGMENTS_FILE = Path("search-relevance") / "esci_us_judgments.json"
N_FOLDS = 5
RATING = {"100.000": "E", "10.000": "S", "1.000": "C", "0.000": "I"}  # OpenSearch stores the ESCI gain x 100
GAIN = {"E": 1.0, "S": 0.1, "C": 0.01, "I": 0.0}  # esci-data ranking/train.py's esci_label2gain
LABELS = {"E": 2, "S": 1, "C": 0, "I": 0}  # the relevance table's 0 / 1 / 2
METRICS = ("auc", "ndcg10", "recall10")
# all-MiniLM-L6-v2 through sentence-transformers (mean pooling, L2 norm, max_seq_length 256) on product titles
REFERENCE = {"auc": 0.7052, "ndcg10": 0.6592, "recall10": 0.3051}
REFERENCE_FOLDS = [
    {"auc": 0.7709, "ndcg10": 0.6582, "recall10": 0.3325},
    {"auc": 0.6715, "ndcg10": 0.6675, "recall10": 0.2844},
    {"auc": 0.6688, "ndcg10": 0.6737, "recall10": 0.3233},
    {"auc": 0.6732, "ndcg10": 0.5679, "recall10": 0.2714},
    {"auc": 0.7715, "ndcg10": 0.7082, "recall10": 0.3220},
]


def fold_of(query_text: str) -> int:
    return zlib.crc32(query_text.encode()) % N_FOLDS


@dataclasses.dataclass
class Esci:
    products: pd.DataFrame  # product_id, asin, title, brand (every product of the file)
    queries: pd.DataFrame  # query_id, query_text, fold (judgment-file order)
    pairs: pd.DataFrame  # query_id, product_id, esci (E/S/C/I), label (0/1/2), gain; judgment-file order


def load_esci(root: Path, max_queries: int | None = None) -> Esci:
    """The judged pairs, queries and products of the data folder; the first max_queries queries only if given."""
    with gzip.open(root / PRODUCTS_FILE, "rt") as f:
        records = [json.loads(line) for line in f]
    records.sort(key=lambda r: r["asin"])
    # product text only: the `query_id` field is never read (leakage: it names the queries a product was judged for)
    products = pd.DataFrame({"product_id": np.arange(1, len(records) + 1, dtype=np.int64),
                             "asin": [r["asin"] for r in records],
                             "title": [(r.get("title") or "").strip() for r in records],
                             "brand": [str(r.get("brand") or "").strip() for r in records]})
    pid_of = dict(zip(products.asin, products.product_id))
    judged = json.loads((root / JUDGMENTS_FILE).read_text())["judgmentRatings"]
    if max_queries:
        judged = judged[:max_queries]
    texts = [r["query"] for r in judged]
    queries = pd.DataFrame({"query_id": np.arange(1, len(texts) + 1, dtype=np.int64), "query_text": texts,
                            "fold": [fold_of(t) for t in texts]})
    rows = [(qid, pid_of[x["docId"]], RATING[x["rating"]]) for qid, r in zip(queries.query_id, judged)
            for x in r["ratings"]]
    pairs = pd.DataFrame(rows, columns=["query_id", "product_id", "esci"])
    pairs["label"] = pairs.esci.map(LABELS).astype(np.int8)
    pairs["gain"] = pairs.esci.map(GAIN)
    return Esci(products, queries, pairs)


def write_tables(esci: Esci, data_dir: Path, train_queries: np.ndarray) -> Path:
    """data_dir/raw/{products, queries, relevance}: the training queries, their judgments and the products they
    judged (the catalog stage 2 reads; it encodes the whole catalog once when the product side is frozen)."""
    raw = Path(data_dir) / "raw"
    rel = esci.pairs[esci.pairs.query_id.isin(train_queries)]
    products = esci.products[esci.products.product_id.isin(rel.product_id)]
    write_table("products", products[["product_id", "title", "brand"]], raw / "products")
    queries = esci.queries[esci.queries.query_id.isin(train_queries)]
    write_table("queries", queries[["query_id", "query_text"]], raw / "queries")
    write_table("relevance", rel[["query_id", "product_id", "label"]], raw / "relevance")
    return Path(data_dir)


def cosines(pairs: pd.DataFrame, q_emb: dict[int, np.ndarray], p_emb: dict[int, np.ndarray]) -> np.ndarray:
    """[n] cos(query, product) of the judged pairs (the embeddings are L2-normalised)."""
    q = np.stack([q_emb[int(x)] for x in pairs.query_id])
    p = np.stack([p_emb[int(x)] for x in pairs.product_id])
    return (q * p).sum(1)


def score(pairs: pd.DataFrame, cos: np.ndarray) -> dict:
    """The three metrics of judged pairs scored by cos."""
    ei = pairs.esci.isin(["E", "I"]).to_numpy()
    return {"auc": auc((pairs.esci.to_numpy()[ei] == "E").astype(np.int8), cos[ei]),
            "ndcg10": judged_ndcg(pairs.query_id.to_numpy(), pairs.gain.to_numpy(), cos),
            "recall10": judged_recall(pairs.query_id.to_numpy(), (pairs.esci == "E").to_numpy(), cos),
            "queries": int(pairs.query_id.nunique()), "pairs": int(len(pairs))}


def offshelf_embeddings(esci: Esci, pairs: pd.DataFrame) -> tuple[dict, dict]:
    """all-MiniLM-L6-v2 as sentence-transformers computes it, for the queries and products of `pairs`."""
    bert, tokenizer = load_minilm_encoder()
    max_len = minilm_max_seq_length()
    pids = np.unique(pairs.product_id.to_numpy())
    titles = esci.products.set_index("product_id").loc[pids, "title"].tolist()
    qids = np.unique(pairs.query_id.to_numpy())
    texts = esci.queries.set_index("query_id").loc[qids, "query_text"].tolist()
    p = embed_sentences(bert, tokenizer, titles, max_len)
    q = embed_sentences(bert, tokenizer, texts, max_len)
    return dict(zip(qids.tolist(), q)), dict(zip(pids.tolist(), p))


def checkpoint_embeddings(checkpoint: Path, esci: Esci, pairs: pd.DataFrame) -> tuple[dict, dict]:
    """A stage-2 checkpoint's query and product embeddings for the queries and products of `pairs`."""
    model, cfg = load_checkpoint(checkpoint)
    model.eval()
    tokenizer = load_tokenizer(cfg)
    pids = np.unique(pairs.product_id.to_numpy())
    titles = esci.products.set_index("product_id").loc[pids, "title"].tolist()
    catalog = Catalog(pids, titles, None, None, None, [])
    p = embed_products(model, catalog, tokenizer, cfg.max_title_len)
    qids = np.unique(pairs.query_id.to_numpy())
    q = embed_queries(model, esci.queries.set_index("query_id").loc[qids, "query_text"].tolist(), tokenizer,
                      cfg.max_query_len)
    return dict(zip(qids.tolist(), q)), dict(zip(pids.tolist(), p))


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval of the mean (nan bounds for fewer than 2 values)."""
    v = np.asarray(values, np.float64)
    mean = float(v.mean())
    if len(v) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def _sd(values) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def run(args, cfg: EmbeddingConfig, work: Path) -> dict:
    """The whole benchmark; returns every number (also recorded and summarised)."""
    started = time.perf_counter()
    esci = load_esci(args.data_root, args.max_queries)
    folds = [f for f in args.folds if (esci.queries.fold == f).any()]
    name = cfg.name + ("" if not args.max_queries else f"-q{args.max_queries}") + (
        "" if not args.max_steps else f"-steps{args.max_steps}")
    fold_pairs = {f: esci.pairs[esci.pairs.query_id.isin(esci.queries.query_id[esci.queries.fold == f])]
                  for f in folds}
    test_pairs = pd.concat([fold_pairs[f] for f in folds], ignore_index=True)
    t0 = time.perf_counter()
    q_off, p_off = offshelf_embeddings(esci, test_pairs)
    result = {"config": name, "folds": folds, "seeds": [] if args.offshelf_only else args.seeds,
              "subset": bool(args.max_queries), "offshelf_seconds": time.perf_counter() - t0,
              "offshelf": {f: score(fold_pairs[f], cosines(fold_pairs[f], q_off, p_off)) for f in folds},
              "offshelf_all": score(test_pairs, cosines(test_pairs, q_off, p_off)),
              "stage2": {}, "stage2_all": {}, "train_seconds": {}, "best_step": {}}
    for seed in result["seeds"]:
        cos_all = []
        for f in folds:
            data = work / f"fold{f}_seed{seed}"
            train_q = esci.queries.query_id[esci.queries.fold != f].to_numpy()
            write_tables(esci, data, train_q)
            run_cfg = dataclasses.replace(cfg, seed=seed, checkpoints=str(data / "checkpoints"),
                                          max_steps=args.max_steps or cfg.max_steps)
            t0 = time.perf_counter()
            ckpt = train_stage2(run_cfg, data, progress=False)
            result["train_seconds"][(f, seed)] = time.perf_counter() - t0
            result["best_step"][(f, seed)] = json.loads((ckpt / "model_config.json").read_text()).get("best_step")
            q, p = checkpoint_embeddings(ckpt, esci, fold_pairs[f])
            cos = cosines(fold_pairs[f], q, p)
            result["stage2"][(f, seed)] = score(fold_pairs[f], cos)
            cos_all.append(cos)
            shutil.rmtree(data, ignore_errors=True)
        # every query scored by the model of its own fold, pooled as the offshelf "all" row is
        result["stage2_all"][seed] = score(test_pairs, np.concatenate(cos_all))
    result["wall_seconds"] = time.perf_counter() - started
    return result


def report(result: dict, markdown: Path) -> list[dict]:
    """Record every number (benchmarks.common.record) and write the markdown summary."""
    name, folds, seeds = result["config"], result["folds"], result["seeds"]
    lines = []

    def rec(metric, value, unit="", **extra):
        lines.append(common.record("esci", metric, float(value), unit, name, **extra))

    off = result["offshelf"]
    for f in folds:
        for m in METRICS:
            rec(f"offshelf_{m}", off[f][m], fold=f, queries=off[f]["queries"],
                reference=None if result["subset"] else REFERENCE_FOLDS[f][m])
    for m in METRICS:
        rec(f"offshelf_{m}_all", result["offshelf_all"][m], queries=result["offshelf_all"]["queries"])
        rec(f"offshelf_{m}_fold_mean", np.mean([off[f][m] for f in folds]), fold_sd=_sd([off[f][m] for f in folds]))
    md = [f"# ESCI benchmark ({name}): stage 2 vs the off-the-shelf encoder", "",
          f"folds {folds}, seeds {seeds}; offshelf = all-MiniLM-L6-v2 (mean pooling, L2 norm, 256 tokens); "
          f"stage 2 = `{name}` config. Metrics on each fold's judged pairs (fold = crc32(query) % 5).", ""]
    s2 = result["stage2"]
    if s2:
        diffs = {m: [] for m in METRICS}
        for (f, seed), r in sorted(s2.items()):
            for m in METRICS:
                rec(f"stage2_{m}", r[m], fold=f, seed=seed, queries=r["queries"],
                    train_seconds=round(result["train_seconds"][(f, seed)], 1),
                    best_step=result["best_step"][(f, seed)])
                diffs[m].append(r[m] - off[f][m])
        for m in METRICS:
            means = [np.mean([s2[(f, s)][m] for s in seeds]) for f in folds]
            rec(f"stage2_{m}_fold_mean", np.mean(means), fold_sd=_sd(means))
            mean, lo, hi = interval(diffs[m])
            rec(f"diff_{m}", mean, "stage2 - offshelf", ci95=[lo, hi], n=len(diffs[m]))
        for seed, r in result["stage2_all"].items():
            for m in METRICS:
                rec(f"stage2_{m}_all", r[m], seed=seed, queries=r["queries"])
        train = list(result["train_seconds"].values())
        rec("stage2_train_seconds_mean", np.mean(train), "s", runs=len(train))
        md += ["| fold | queries | offshelf AUC | stage 2 AUC | offshelf NDCG@10 | stage 2 NDCG@10 | offshelf R@10 "
               "| stage 2 R@10 | train s |", "|---|---|---|---|---|---|---|---|---|"]
        for f in folds:
            cells = [f"{f}", f"{off[f]['queries']}"]
            for m in METRICS:
                vals = [s2[(f, s)][m] for s in seeds]
                cells += [f"{off[f][m]:.4f}", f"{np.mean(vals):.4f}" + (f" ± {_sd(vals):.4f}" if len(vals) > 1 else "")]
            cells.append(f"{np.mean([result['train_seconds'][(f, s)] for s in seeds]):.0f}")
            md.append("| " + " | ".join(cells) + " |")
        md += ["", "| metric | offshelf (mean ± sd over folds) | stage 2 (mean ± sd over folds) | paired difference "
               "(mean, 95% interval over folds x seeds) |", "|---|---|---|---|"]
        for m in METRICS:
            o = [off[f][m] for f in folds]
            st = [np.mean([s2[(f, s)][m] for s in seeds]) for f in folds]
            mean, lo, hi = interval(diffs[m])
            md.append(f"| {m} | {np.mean(o):.4f} ± {_sd(o):.4f} | {np.mean(st):.4f} ± {_sd(st):.4f} | "
                      f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}] |")
    else:
        md += ["| fold | queries | offshelf AUC | offshelf NDCG@10 | offshelf R@10 |", "|---|---|---|---|---|"]
        md += [f"| {f} | {off[f]['queries']} | " + " | ".join(f"{off[f][m]:.4f}" for m in METRICS) + " |"
               for f in folds]
    allo = result["offshelf_all"]
    md += ["", f"offshelf over all {allo['queries']} queries of these folds: AUC {allo['auc']:.4f}, NDCG@10 "
           f"{allo['ndcg10']:.4f}, recall@10 {allo['recall10']:.4f} (reference, all 150 queries: AUC "
           f"{REFERENCE['auc']:.3f}, NDCG@10 {REFERENCE['ndcg10']:.3f}).",
           f"Wall time {result['wall_seconds']:.0f} s (offshelf encoding {result['offshelf_seconds']:.0f} s); "
           f"torch threads {torch.get_num_threads()}."]
    rec("wall_seconds", result["wall_seconds"], "s")
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return lines


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.esci_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="the esci_opensearch_150q folder")
    parser.add_argument("--folds", type=_ints, default=list(range(N_FOLDS)), help="test folds, e.g. 0,1")
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="training seeds, e.g. 0,1,2")
    parser.add_argument("--max-queries", type=int, default=None,
                        help="use only the first N queries of the judgments file (short runs)")
    parser.add_argument("--max-steps", type=int, default=0, help="stage-2 steps at most per run (short runs)")
    parser.add_argument("--offshelf-only", action="store_true", help="no training: the offshelf rows only")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="the summary (default benchmarks/results/esci.md beside the JSON lines)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the per-fold tables (default: temporary)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    args.config = args.config or DEFAULT_CONFIG
    if not (args.data_root / JUDGMENTS_FILE).is_file():
        print(f"esci_bench: skipped: {args.data_root} (esci_opensearch_150q) is not present")
        return 0
    if bad := [f for f in args.folds if not 0 <= f < N_FOLDS]:
        parser.error(f"--folds: {bad} not in 0..{N_FOLDS - 1}")
    cfg = config_from_args(EmbeddingConfig, args)
    set_threads(cfg.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="esci-bench-"))
    try:
        result = run(args, cfg, work)
        report(result, args.markdown or common.RESULTS / "esci.md")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
