"""DashCLIP stage 2 on real shopping queries (Amazon ESCI): does it beat the shipped encoder and ST's fine-tune of it?

    python -m benchmarks.esci_bench [--data-root DIR] [--config experiments/configs/embeddings/text.yaml]
                                    [--folds 0,1,2,3,4] [--seeds 0,1,2] [--methods stage2[,st]] [--peers st]
                                    [--train-queries 0 | 30,60,0] [--max-queries N] [--max-steps K]
                                    [--st-python .bench-venvs/st/bin/python] [--cache DIR] [--offshelf-only]
                                    [key=value ...]

--data-root: esci_opensearch_150q in the shared data folder beside the repository (DASHCLIP_PUBLIC_DATA points
elsewhere, as in tests/conftest.py): 150 real queries, 6,678 human ESCI judgments (Exact / Substitute / Complement /
Irrelevant) and the product text of every judged product (PROVENANCE.md there). Skipped (exit 0, reason printed)
when the folder is absent.

The documented route: per fold, the data become the project's raw tables in a temporary folder (never in the
repository): `products` (product_id, title, brand; ids numbered in ASIN order over the whole file; the products the
training queries judged), `queries` (the training folds' queries), `relevance` (their judgments, label Exact 2,
Substitute 1, Complement and Irrelevant 0: LABELS; no source column). The products' `query_id` field lists the ESCI
queries each product was judged for: it is never read (PROVENANCE.md's leakage warning). Stage 2
(embeddings.train.train_stage2, the text config: all-MiniLM-L6-v2 with mean pooling and an identity projection, so
step 0 is the shipped model) trains on them; its own validation split (by query, heldout_query_share of the training
queries) picks the best checkpoint.

Cross-validation over queries: fold = zlib.crc32(query_text.encode()) % 5 (29 / 47 / 26 / 22 / 26 queries); each
fold's queries are scored by a model trained on the other four, for each seed. Metrics on the fold's judged pairs,
scored by cosine (`score`, the same for every row): `auc` (Exact vs Irrelevant, pooled over the fold's queries),
`ndcg10` (per query over its judged products, ESCI gains E 1.0 / S 0.1 / C 0.01 / I 0, mean over queries),
`recall10` (the share of a query's Exact products in its top 10 judged products, mean over queries).

Encoders (rows): `offshelf` (all-MiniLM-L6-v2 as shipped, mean pooling, L2 norm, 256 tokens: what
sentence-transformers computes; no training, so one number per fold); `stage2` (--methods stage2, the default); `st`
(--methods stage2,st or --peers st): the peer, sentence-transformers' own fine-tune of the same shipped model
directory (embeddings.pretrained.minilm_dir) on the fold's training Exact pairs (query, title) with
MultipleNegativesRankingLoss, 1 epoch, batch 32, lr 2e-5, 10% linear warm-up, weight decay 0.01
(benchmarks/peers/st_finetune.py). It runs from its own code in its own virtualenv (.bench-venvs/st, made by
`benchmarks/peers/setup_venvs.sh st`; --st-python points elsewhere) and never imports the project: the bench hands it
JSON files (training pairs, test query texts, test product titles) and scores the L2-normalised embeddings it writes
back. --max-steps K caps the training steps of both (stage 2's max_steps, ST's max_steps; short runs only).

Learning curve: --train-queries 30,60,0 trains every method once per n on the first n of the fold's training
queries (0: all of them) in an order that depends on neither the seed nor the method (crc32 of the text with the
salt SUBSET_SALT; the first 30 are the first 30 of the first 60). Stage 2 holds out its validation split from those n.

Each run (method, fold, seed, n) is cached as one JSON file (its metrics, train seconds, best step and the cosine of
every judged pair of its fold), written atomically under --cache (default benchmarks/results/esci_runs)
/<config name>/<method>-<key>/f<fold>_s<seed>_n<n>.json, where <key> hashes what decides the result: for stage2 the
resolved EmbeddingConfig (dataclasses.asdict less seed and checkpoints; --max-steps included), for st the peer
script's text and --max-steps, for both the data subset (--max-queries); offshelf is cached per fold the same way.
A rerun skips the runs it finds (and says so), so a grid can be split across processes (e.g. by --folds or
--methods) and resumed; the report is always built from the cache over the requested grid. Records also carry a hash
of the embeddings/ sources: the report counts cached stage-2 runs trained by other code than the current one.

Reported (for the main n: 0 if requested, else the largest): per fold (trained rows: mean over seeds), in total (mean
and sample standard deviation over folds; and "all": every query scored by its own fold's model, pooled, per seed),
the paired differences stage2 - offshelf, stage2 - st and st - offshelf (pairs by (fold, seed); mean and 95%
t-interval over folds x seeds), wall and train times; with several n a learning-curve table (per n: mean AUC and
NDCG@10 of every row, the paired differences stage2 - offshelf and stage2 - st) and a plot of both metrics against
the number of training queries (esci_learning_curve.png beside the markdown). One JSON line per number through
benchmarks.common.record (benchmarks/results/esci.jsonl; trained rows carry train_queries = n), a markdown summary
in benchmarks/results/esci.md (--markdown elsewhere). Reference for the offshelf row (REFERENCE: measured with
sentence-transformers' own code): all 150 queries AUC 0.705, NDCG@10 0.659; per fold in REFERENCE_FOLDS (the report
says whether the offshelf row reproduces it within REFERENCE_TOLERANCE).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import math
import os
import shutil
import subprocess
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
from core.files import write_text_atomically  # noqa: E402
from core.metrics import auc  # noqa: E402
from embeddings.checkpoint import load_checkpoint  # noqa: E402
from embeddings.config import EmbeddingConfig, set_threads  # noqa: E402
from embeddings.data import Catalog  # noqa: E402
from embeddings.encode import embed_products, embed_queries, embed_sentences  # noqa: E402
from embeddings.metrics import judged_ndcg, judged_recall  # noqa: E402
from embeddings.pretrained import load_minilm_encoder, load_tokenizer, minilm_dir, minilm_max_seq_length  # noqa: E402
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
REFERENCE_TOLERANCE = 0.005
METHODS = ("stage2", "st")  # the trained rows; offshelf is always there
COMPARISONS = (("stage2", "offshelf"), ("stage2", "st"), ("st", "offshelf"))  # the paired differences a - b
SUBSET_SALT = b"esci-learning-curve:"  # the order of training queries for --train-queries n (subset_rank)
ST_SCRIPT = ROOT / "benchmarks" / "peers" / "st_finetune.py"
DEFAULT_ST_PYTHON = ROOT / ".bench-venvs" / "st" / "bin" / "python"
EMBEDDINGS_SRC = ROOT / "embeddings"
CACHE_VERSION = 1  # of the run records' layout


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
    """Mean and 95% t-interval of the mean (nan bounds for fewer than 2 values; all nan for none)."""
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if len(v) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def _sd(values) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


# ----------------------------------------------------------------------------------------------------------------
# training-query subsets (the learning curve)


def subset_rank(query_text: str) -> tuple[int, str]:
    """The learning curve's order of training queries: crc32 of the salted text (independent of fold_of's hash),
    the text itself breaking ties. Neither the seed nor the method enters it."""
    return zlib.crc32(SUBSET_SALT + query_text.encode()), query_text


def training_queries(queries: pd.DataFrame, fold: int, n: int = 0) -> np.ndarray:
    """The query_ids stage 2 and the peer train on when `fold` is tested: every query of the other folds (n = 0 or
    n >= their number), else the first n of them by subset_rank (nested: the first 30 are in the first 60)."""
    train = queries[queries.fold != fold]
    if n <= 0 or n >= len(train):
        return np.sort(train.query_id.to_numpy())
    order = sorted(range(len(train)), key=lambda i: subset_rank(train.query_text.iloc[i]))
    return np.sort(train.query_id.to_numpy()[order[:n]])


# ----------------------------------------------------------------------------------------------------------------
# the per-run cache


def key_hash(key) -> str:
    """12 hex digits of sha256 over the canonical JSON of key."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stage2_key(cfg: EmbeddingConfig, max_queries: int | None = None) -> dict:
    """What decides a stage-2 result besides fold, seed and n: the resolved config less seed and checkpoints, and the
    data subset."""
    config = dataclasses.asdict(cfg)
    for field in ("seed", "checkpoints"):
        config.pop(field, None)
    return {"method": "stage2", "config": config, "max_queries": max_queries or 0, "version": CACHE_VERSION}


def st_key(max_steps: int, max_queries: int | None = None, script: Path | None = None) -> dict:
    """What decides a peer result besides fold, seed and n: the peer script's text (its recipe), --max-steps and the
    data subset."""
    text = Path(script or ST_SCRIPT).read_bytes()
    return {"method": "st", "script_sha256": hashlib.sha256(text).hexdigest(), "max_steps": max_steps or 0,
            "max_queries": max_queries or 0, "version": CACHE_VERSION}


def offshelf_key(max_queries: int | None = None) -> dict:
    return {"method": "offshelf", "model": "all-MiniLM-L6-v2", "max_seq_length": minilm_max_seq_length(),
            "max_queries": max_queries or 0, "version": CACHE_VERSION}


def source_hash(folder: Path = EMBEDDINGS_SRC) -> str:
    """12 hex digits of sha256 over the embeddings/ sources (recorded with every stage-2 run, not keyed)."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def pairs_crc(pairs: pd.DataFrame) -> int:
    """crc32 of the (query_id, product_id) sequence a run's cosines belong to (a stale cache never matches)."""
    return zlib.crc32(pairs[["query_id", "product_id"]].to_numpy(np.int64).tobytes())


class RunCache:
    """JSON files <root>/<method>-<key hash>/<name>.json, written atomically; key.json beside them says what the
    hash covers."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def folder(self, key: dict) -> Path:
        return self.root / f"{key['method']}-{key_hash(key)}"

    def path(self, key: dict, name: str) -> Path:
        return self.folder(key) / f"{name}.json"

    def get(self, key: dict, name: str, crc: int | None = None) -> dict | None:
        path = self.path(key, name)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if crc is not None and record.get("pairs_crc") != crc:
            print(f"esci_bench: {path}: judged pairs differ from this run's; recomputing", flush=True)
            return None
        return record

    def put(self, key: dict, name: str, record: dict) -> Path:
        folder = self.folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "key.json").is_file():
            write_text_atomically(folder / "key.json", json.dumps(key, indent=1, sort_keys=True, default=str))
        path = folder / f"{name}.json"
        write_text_atomically(path, json.dumps(record, default=_jsonable))
        return path


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def run_name(fold: int, seed: int, n: int) -> str:
    return f"f{fold}_s{seed}_n{n}"


# ----------------------------------------------------------------------------------------------------------------
# one run of each method


def run_stage2(esci: Esci, cfg: EmbeddingConfig, fold: int, seed: int, n: int, work: Path,
               fold_pairs: pd.DataFrame) -> dict:
    """Stage 2 trained on the fold's (first n) training queries, scored on the fold's judged pairs."""
    data = work / f"stage2_{run_name(fold, seed, n)}"
    train_q = training_queries(esci.queries, fold, n)
    write_tables(esci, data, train_q)
    run_cfg = dataclasses.replace(cfg, seed=seed, checkpoints=str(data / "checkpoints"))
    try:
        t0 = time.perf_counter()
        ckpt = train_stage2(run_cfg, data, progress=False)
        train_seconds = time.perf_counter() - t0
        best_step = json.loads((ckpt / "model_config.json").read_text()).get("best_step")
        q, p = checkpoint_embeddings(ckpt, esci, fold_pairs)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    cos = cosines(fold_pairs, q, p)
    return {"train_query_count": len(train_q), "train_pairs": int(esci.pairs.query_id.isin(train_q).sum()),
            "train_seconds": train_seconds, "best_step": best_step, "code": source_hash(),
            "metrics": score(fold_pairs, cos), "cos": cos.astype(np.float64).tolist()}


def st_inputs(esci: Esci, fold: int, n: int, fold_pairs: pd.DataFrame) -> tuple[list[dict], list, list, list, list]:
    """The peer's inputs: training Exact pairs [{query, title}] (judgment-file order), the test query ids and
    texts, the test product ids and titles."""
    train_q = training_queries(esci.queries, fold, n)
    exact = esci.pairs[esci.pairs.query_id.isin(train_q) & (esci.pairs.esci == "E")]
    text = esci.queries.set_index("query_id").query_text
    title = esci.products.set_index("product_id").title
    train = [{"query": text[q], "title": title[p]} for q, p in zip(exact.query_id, exact.product_id)]
    qids = np.unique(fold_pairs.query_id.to_numpy())
    pids = np.unique(fold_pairs.product_id.to_numpy())
    return train, qids.tolist(), text.loc[qids].tolist(), pids.tolist(), title.loc[pids].tolist()


def run_st(esci: Esci, args, fold: int, seed: int, n: int, work: Path, fold_pairs: pd.DataFrame) -> dict:
    """The sentence-transformers peer in its own interpreter on the fold's (first n) training queries' Exact pairs;
    RuntimeError with its last error line when it fails."""
    folder = work / f"st_{run_name(fold, seed, n)}"
    folder.mkdir(parents=True, exist_ok=True)
    train, qids, texts, pids, titles = st_inputs(esci, fold, n, fold_pairs)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (folder / "queries.json").write_text(json.dumps(texts))
    (folder / "titles.json").write_text(json.dumps(titles))
    command = [str(args.st_python), str(ST_SCRIPT), "--model", str(minilm_dir()), "--train", "train.jsonl",
               "--queries", "queries.json", "--titles", "titles.json", "--out", "out", "--seed", str(seed),
               "--max-steps", str(args.max_steps or 0), "--threads", "1"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    try:
        t0 = time.perf_counter()
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=4 * 3600)
        wall = time.perf_counter() - t0
        if done.returncode:
            err = done.stderr.strip().splitlines()
            raise RuntimeError(f"st_finetune.py failed (exit {done.returncode}): {err[-1] if err else ''}")
        info = json.loads(done.stdout.strip().splitlines()[-1])
        q = np.load(folder / "out" / "queries.npy")
        p = np.load(folder / "out" / "titles.npy")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if q.shape[0] != len(qids) or p.shape[0] != len(pids):
        raise RuntimeError(f"st_finetune.py wrote {q.shape[0]} / {p.shape[0]} rows for {len(qids)} / {len(pids)}")
    cos = cosines(fold_pairs, dict(zip(qids, q)), dict(zip(pids, p)))
    return {"train_query_count": len({r["query"] for r in train}), "train_pairs": len(train),
            "train_seconds": info["train_seconds"], "peer_seconds": wall, "best_step": None, "steps": info["steps"],
            "peer": {k: info.get(k) for k in ("sentence_transformers", "torch", "recipe", "max_seq_length")},
            "metrics": score(fold_pairs, cos), "cos": cos.astype(np.float64).tolist()}


def st_unavailable(python: Path) -> str | None:
    """Why the peer cannot run (None when it can)."""
    python = Path(python)
    if not python.exists():
        return f"st: no interpreter {python} (run benchmarks/peers/setup_venvs.sh st, or pass --st-python)"
    if python == DEFAULT_ST_PYTHON and not (python.parent.parent / ".ok").exists():
        return f"st: {python.parent.parent} is incomplete (rerun benchmarks/peers/setup_venvs.sh st)"
    return None


# ----------------------------------------------------------------------------------------------------------------
# the grid


def run(args, cfg: EmbeddingConfig, work: Path) -> dict:
    """Every run of the grid (from the cache where present), the offshelf row, and the pooled rows; returns the
    numbers report() records and summarises."""
    started = time.perf_counter()
    esci = load_esci(args.data_root, args.max_queries)
    folds = [f for f in args.folds if (esci.queries.fold == f).any()]
    name = cfg.name + ("" if not args.max_queries else f"-q{args.max_queries}") + (
        "" if not args.max_steps else f"-steps{args.max_steps}")
    cache = RunCache(Path(args.cache or common.RESULTS / "esci_runs") / name)
    fold_pairs = {f: esci.pairs[esci.pairs.query_id.isin(esci.queries.query_id[esci.queries.fold == f])]
                  for f in folds}
    test_pairs = pd.concat([fold_pairs[f] for f in folds], ignore_index=True)
    crc = {f: pairs_crc(fold_pairs[f]) for f in folds}

    # offshelf: one number per fold (no training), cached like the runs
    t0 = time.perf_counter()
    okey = offshelf_key(args.max_queries)
    off_cos = {}
    for f in folds:
        got = cache.get(okey, f"f{f}", crc[f])
        if got is not None:
            off_cos[f] = np.asarray(got["cos"])
    if missing := [f for f in folds if f not in off_cos]:
        pairs = pd.concat([fold_pairs[f] for f in missing])
        q_off, p_off = offshelf_embeddings(esci, pairs)
        for f in missing:
            off_cos[f] = cosines(fold_pairs[f], q_off, p_off)
            cache.put(okey, f"f{f}", {"method": "offshelf", "fold": f, "pairs_crc": crc[f],
                                      "metrics": score(fold_pairs[f], off_cos[f]), "cos": off_cos[f].tolist()})
    result = {"config": name, "folds": folds, "seeds": args.seeds if args.methods else [], "ns": args.train_queries,
              "methods": list(args.methods), "subset": bool(args.max_queries), "cache": str(cache.root),
              "offshelf_seconds": time.perf_counter() - t0,
              "offshelf": {f: score(fold_pairs[f], off_cos[f]) for f in folds},
              "offshelf_all": score(test_pairs, np.concatenate([off_cos[f] for f in folds])),
              "runs": {}, "all": {}, "notes": [], "cached": 0, "computed": 0, "code": source_hash()}

    run_cfg = dataclasses.replace(cfg, max_steps=args.max_steps or cfg.max_steps)
    keys = {"stage2": stage2_key(run_cfg, args.max_queries), "st": st_key(args.max_steps, args.max_queries)}
    st_problem = st_unavailable(args.st_python) if "st" in args.methods else None
    for n in args.train_queries:
        for seed in result["seeds"]:
            for f in folds:
                for method in args.methods:
                    label = f"{method} fold {f} seed {seed} n {n or 'all'}"
                    record = cache.get(keys[method], run_name(f, seed, n), crc[f])
                    if record is not None:
                        print(f"esci_bench: {label}: cached ({cache.path(keys[method], run_name(f, seed, n))})",
                              flush=True)
                        result["cached"] += 1
                    elif method == "st" and st_problem:
                        result["notes"].append(st_problem)
                        continue
                    else:
                        print(f"esci_bench: {label}: training", flush=True)
                        try:
                            if method == "stage2":
                                got = run_stage2(esci, run_cfg, f, seed, n, work, fold_pairs[f])
                            else:
                                got = run_st(esci, args, f, seed, n, work, fold_pairs[f])
                        except Exception as e:  # noqa: BLE001 (the peer's failures are reported, not fatal)
                            if method == "stage2":
                                raise
                            result["notes"].append(f"{label}: {e}")
                            print(f"esci_bench: {label}: {e}", flush=True)
                            continue
                        record = {"method": method, "fold": f, "seed": seed, "train_queries": n,
                                  "pairs_crc": crc[f], "cache_key": key_hash(keys[method]),
                                  "git_sha": common.git_sha(), "when": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                      time.gmtime()), **got}
                        path = cache.put(keys[method], run_name(f, seed, n), record)
                        result["computed"] += 1
                        print(f"esci_bench: {label}: {record['train_seconds']:.0f} s, AUC "
                              f"{record['metrics']['auc']:.4f}, NDCG@10 {record['metrics']['ndcg10']:.4f} "
                              f"-> {path}", flush=True)
                    result["runs"][(method, f, seed, n)] = record
    # every query scored by the model of its own fold, pooled as the offshelf "all" row is (complete grids only)
    for method in args.methods:
        for n in args.train_queries:
            for seed in result["seeds"]:
                if all((method, f, seed, n) in result["runs"] for f in folds):
                    cos = np.concatenate([result["runs"][(method, f, seed, n)]["cos"] for f in folds])
                    result["all"][(method, seed, n)] = score(test_pairs, cos)
    result["wall_seconds"] = time.perf_counter() - started
    return result


# ----------------------------------------------------------------------------------------------------------------
# the report


def paired_differences(runs: dict, offshelf: dict, a: str, b: str, n: int, metric: str) -> list[float]:
    """a - b of `metric` for every (fold, seed) both have at n, in (fold, seed) order. runs: {(method, fold, seed,
    n): metrics dict}; offshelf: {fold: metrics dict} (b = "offshelf" pairs each run of a with its fold's row)."""
    out = []
    for (method, f, seed, m), r in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if method != a or m != n:
            continue
        other = offshelf.get(f) if b == "offshelf" else runs.get((b, f, seed, n))
        if other is not None:
            out.append(r[metric] - other[metric])
    return out


def paired_table(runs: dict, offshelf: dict, ns, comparisons=COMPARISONS, metrics=METRICS) -> dict:
    """{(a, b, n, metric): (mean, lo, hi, pairs)}: the paired differences a - b and their 95% t-intervals over
    folds x seeds, for each comparison and n with at least one pair."""
    table = {}
    for a, b in comparisons:
        for n in ns:
            for metric in metrics:
                diffs = paired_differences(runs, offshelf, a, b, n, metric)
                if diffs:
                    table[(a, b, n, metric)] = (*interval(diffs), len(diffs))
    return table


def method_means(runs: dict, method: str, n: int, folds, seeds, metric: str) -> list[float]:
    """Per fold, the mean over seeds of `metric` (folds with no run left out)."""
    out = []
    for f in folds:
        vals = [runs[(method, f, s, n)][metric] for s in seeds if (method, f, s, n) in runs]
        if vals:
            out.append(float(np.mean(vals)))
    return out


def _mean_sd(values) -> str:
    return f"{np.mean(values):.4f}" + (f" ± {_sd(values):.4f}" if len(values) > 1 else "")


def _fmt_ci(cell) -> str:
    if cell is None:
        return "–"
    mean, lo, hi, _ = cell
    return f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]" if not math.isnan(lo) else f"{mean:+.4f}"


def _step0(result: dict, n: int) -> str:
    """'k / N': the stage-2 runs at n whose best checkpoint is step 0."""
    best = [r.get("best_step") for k, r in result["runs"].items() if k[0] == "stage2" and k[3] == n]
    return f"{sum(b == 0 for b in best)} / {len(best)}"


def _n_label(n: int) -> str:
    return "all" if n == 0 else str(n)


def plot_learning_curve(result: dict, metric_runs: dict, path: Path) -> Path | None:
    """NDCG@10 and AUC against the number of training queries (means over folds x seeds; the paired differences
    and their intervals are in the table) for offshelf, st and stage2; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    folds, seeds = result["folds"], result["seeds"]
    count = {n: float(np.mean([r["train_query_count"] for k, r in result["runs"].items() if k[3] == n] or [0]))
             for n in result["ns"]}
    order = sorted(result["ns"], key=lambda n: count[n])
    xs = [count[n] for n in order]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, title in zip(axes, ("ndcg10", "auc"), ("NDCG@10", "AUC (Exact vs Irrelevant)")):
        off = float(np.mean([result["offshelf"][f][metric] for f in folds]))
        ax.plot(xs, [off] * len(xs), "k--", label="offshelf")
        for method, style in (("st", "s-"), ("stage2", "o-")):
            pts = [(count[n], np.mean(v)) for n in order
                   if (v := [r[metric] for k, r in metric_runs.items() if k[0] == method and k[3] == n])]
            if pts:
                ax.plot(*zip(*pts), style, label=method)
        ax.set_xticks(xs, [f"all\n({x:.0f})" if n == 0 else f"{n}" for n, x in zip(order, xs)])
        ax.set_xlabel("training queries per fold (stage 2 holds out its validation share)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"ESCI learning curve ({result['config']}): means over folds {folds} x seeds {seeds}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(result: dict, markdown: Path) -> list[dict]:
    """Record every number (benchmarks.common.record) and write the markdown summary (and the learning-curve plot
    when several n were asked for)."""
    name, folds, seeds, ns = result["config"], result["folds"], result["seeds"], result["ns"]
    markdown.parent.mkdir(parents=True, exist_ok=True)
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
    metric_runs = {k: r["metrics"] for k, r in result["runs"].items()}
    table = paired_table(metric_runs, off, ns)
    methods = [m for m in ("st", "stage2") if any(k[0] == m for k in metric_runs)]
    for n in ns:
        for method in methods:
            for (mt, f, seed, k), r in sorted(result["runs"].items()):
                if mt != method or k != n:
                    continue
                for m in METRICS:
                    rec(f"{method}_{m}", r["metrics"][m], fold=f, seed=seed, train_queries=n,
                        queries=r["metrics"]["queries"], train_seconds=round(r["train_seconds"], 1),
                        best_step=r.get("best_step"), train_query_count=r["train_query_count"])
            for m in METRICS:
                means = method_means(metric_runs, method, n, folds, seeds, m)
                if means:
                    rec(f"{method}_{m}_fold_mean", np.mean(means), fold_sd=_sd(means), folds=len(means),
                        train_queries=n)
            for (mt, seed, k), r in sorted(result["all"].items()):
                if mt == method and k == n:
                    for m in METRICS:
                        rec(f"{method}_{m}_all", r[m], seed=seed, queries=r["queries"], train_queries=n)
            train = [r["train_seconds"] for (mt, _, _, k), r in result["runs"].items() if mt == method and k == n]
            if train:
                rec(f"{method}_train_seconds_mean", np.mean(train), "s", runs=len(train), train_queries=n)
        for (a, b, k, m), (mean, lo, hi, count) in table.items():
            if k == n:
                metric = f"diff_{m}" if (a, b) == ("stage2", "offshelf") else f"diff_{m}_{a}_{b}"
                rec(metric, mean, f"{a} - {b}", ci95=[lo, hi], n=count, train_queries=n)

    main_n = 0 if 0 in ns else max(ns)
    md = [f"# ESCI benchmark ({name}): stage 2 vs the off-the-shelf encoder"
          + (" and the sentence-transformers fine-tune" if "st" in methods else ""), "",
          f"folds {folds}, seeds {seeds}, training queries {[_n_label(n) for n in ns]}; offshelf = all-MiniLM-L6-v2 "
          f"(mean pooling, L2 norm, 256 tokens); "
          + ("st = sentence-transformers' own fine-tune of it (MNRL, 1 epoch, batch 32, lr 2e-5, on the training "
             "Exact pairs; benchmarks/peers/st_finetune.py in its own virtualenv); " if "st" in methods else "")
          + f"stage 2 = `{name}` config. Metrics on each fold's judged pairs (fold = crc32(query) % 5).", ""]
    if methods:
        md += [f"Trained on {_n_label(main_n)} of each fold's training queries." if main_n else
               "Trained on all of each fold's training queries.", ""]
        head = ["fold", "queries"]
        for m, label in (("auc", "AUC"), ("ndcg10", "NDCG@10"), ("recall10", "R@10")):
            head += ["offshelf " + label] + [f"{meth} {label}" for meth in methods]
        head += [f"{meth} train s" for meth in methods]
        md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for f in folds:
            cells = [f"{f}", f"{off[f]['queries']}"]
            for m in METRICS:
                cells.append(f"{off[f][m]:.4f}")
                for meth in methods:
                    vals = [metric_runs[(meth, f, s, main_n)][m] for s in seeds if (meth, f, s, main_n) in metric_runs]
                    cells.append(_mean_sd(vals) if vals else "–")
            for meth in methods:
                t = [result["runs"][(meth, f, s, main_n)]["train_seconds"] for s in seeds
                     if (meth, f, s, main_n) in result["runs"]]
                cells.append(f"{np.mean(t):.0f}" if t else "–")
            md.append("| " + " | ".join(cells) + " |")
        comps = [c for c in COMPARISONS if all(x == "offshelf" or x in methods for x in c)]
        head = ["metric", "offshelf (mean ± sd over folds)"] + [f"{meth} (mean ± sd over folds)" for meth in methods]
        head += [f"{a} - {b} (mean, 95% interval over folds x seeds)" for a, b in comps]
        md += ["", "Paired differences pair the runs by (fold, seed) (offshelf: the fold's row).", "",
               "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for m in METRICS:
            o = [off[f][m] for f in folds]
            cells = [m, _mean_sd(o)]
            for meth in methods:
                v = method_means(metric_runs, meth, main_n, folds, seeds, m)
                cells.append(_mean_sd(v) if v else "–")
            cells += [_fmt_ci(table.get((a, b, main_n, m))) for a, b in comps]
            md.append("| " + " | ".join(cells) + " |")
        pooled = [f"{meth} seed {s}: AUC {r['auc']:.4f}, NDCG@10 {r['ndcg10']:.4f}, recall@10 {r['recall10']:.4f}"
                  for (meth, s, k), r in sorted(result["all"].items()) if k == main_n and meth in methods]
        if pooled:
            md += ["", "All queries of these folds pooled, each scored by its own fold's model: " + "; ".join(pooled)
                   + "."]
        if "stage2" in methods:
            md += ["", f"stage 2 kept step 0 (the shipped model) in {_step0(result, main_n)} of its runs."]
        if len(ns) > 1:
            md += learning_curve_lines(result, metric_runs, table, methods, markdown)
    else:
        md += ["| fold | queries | offshelf AUC | offshelf NDCG@10 | offshelf R@10 |", "|---|---|---|---|---|"]
        md += [f"| {f} | {off[f]['queries']} | " + " | ".join(f"{off[f][m]:.4f}" for m in METRICS) + " |"
               for f in folds]
    allo = result["offshelf_all"]
    md += ["", f"offshelf over all {allo['queries']} queries of these folds: AUC {allo['auc']:.4f}, NDCG@10 "
           f"{allo['ndcg10']:.4f}, recall@10 {allo['recall10']:.4f} (reference, all 150 queries: AUC "
           f"{REFERENCE['auc']:.3f}, NDCG@10 {REFERENCE['ndcg10']:.3f})."]
    if not result["subset"]:
        gap = max(abs(off[f][m] - REFERENCE_FOLDS[f][m]) for f in folds for m in METRICS)
        md.append(f"offshelf vs REFERENCE_FOLDS (sentence-transformers' own numbers): largest gap {gap:.4f} "
                  + ("(reproduced)" if gap <= REFERENCE_TOLERANCE else
                     f"(NOT reproduced: over {REFERENCE_TOLERANCE})") + ".")
    stale = sum(1 for r in result["runs"].values() if r["method"] == "stage2" and r.get("code") != result["code"])
    md += [f"Runs: {result['computed']} trained now, {result['cached']} from the cache ({result['cache']})"
           + (f"; {stale} cached stage-2 runs were trained by other embeddings/ sources than the current ones"
              if stale else "") + ".",
           f"Wall time {result['wall_seconds']:.0f} s (offshelf encoding {result['offshelf_seconds']:.0f} s); "
           f"torch threads {torch.get_num_threads()} (the st peer: 1)."]
    if result["notes"]:
        md += ["", "Not run:"] + [f"- {x}" for x in dict.fromkeys(result["notes"])]
    rec("wall_seconds", result["wall_seconds"], "s")
    markdown.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return lines


def learning_curve_lines(result: dict, metric_runs: dict, table: dict, methods: list[str], markdown: Path) -> list:
    """The learning-curve table (per n) and its plot beside the markdown."""
    folds, seeds = result["folds"], result["seeds"]
    count = {n: [r["train_query_count"] for (m, f, s, k), r in result["runs"].items() if k == n]
             for n in result["ns"]}
    order = sorted(result["ns"], key=lambda n: (np.mean(count[n]) if count[n] else math.inf))
    comps = [c for c in (("stage2", "offshelf"), ("stage2", "st")) if all(x == "offshelf" or x in methods for x in c)]
    head = ["training queries", "runs per method"]
    for label in ("AUC", "NDCG@10"):
        head += [f"offshelf {label}"] + [f"{meth} {label}" for meth in methods]
    for label in ("AUC", "NDCG@10"):
        head += [f"{a} - {b} {label} [95%]" for a, b in comps]
    head += ["stage2 runs kept at step 0"] if "stage2" in methods else []
    lines = ["", "## Learning curve: the number of training queries", "",
             "Per n, every method trains on the first n of each fold's training queries (one fixed order, the same "
             "for every seed and method; stage 2 holds out its validation share of them). Means over folds x seeds; "
             "paired differences by (fold, seed).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    off = {m: np.mean([result["offshelf"][f][m] for f in folds]) for m in METRICS}
    for n in order:
        runs = max([sum(1 for k in metric_runs if k[0] == meth and k[3] == n) for meth in methods] or [0])
        cells = [f"{_n_label(n)} (mean {np.mean(count[n]):.0f})" if count[n] else _n_label(n), f"{runs}"]
        for m in ("auc", "ndcg10"):
            cells.append(f"{off[m]:.4f}")
            for meth in methods:
                v = [r[m] for k, r in metric_runs.items() if k[0] == meth and k[3] == n]
                cells.append(f"{np.mean(v):.4f}" if v else "–")
        for m in ("auc", "ndcg10"):
            cells += [_fmt_ci(table.get((a, b, n, m))) for a, b in comps]
        cells += [_step0(result, n)] if "stage2" in methods else []
        lines.append("| " + " | ".join(cells) + " |")
    png = plot_learning_curve(result, metric_runs, markdown.with_name(markdown.stem + "_learning_curve.png"))
    if png is not None:
        lines += ["", f"![learning curve]({png.name}) ({png})"]
    return lines


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.esci_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA, help="the esci_opensearch_150q folder")
    parser.add_argument("--folds", type=_ints, default=list(range(N_FOLDS)), help="test folds, e.g. 0,1")
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="training seeds, e.g. 0,1,2")
    parser.add_argument("--methods", type=_names, default=["stage2"],
                        help=f"trained rows, comma-separated, of {','.join(METHODS)} (default stage2; the offshelf "
                             "row is always there)")
    parser.add_argument("--peers", type=_names, default=[],
                        help="peer rows added to --methods, e.g. st (= --methods stage2,st)")
    parser.add_argument("--train-queries", type=_ints, default=[0],
                        help="learning curve: train on the first n of each fold's training queries, e.g. 30,60,0 "
                             "(0 = all; default 0)")
    parser.add_argument("--max-queries", type=int, default=None,
                        help="use only the first N queries of the judgments file (short runs)")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="training steps at most per run, stage 2 and the st peer alike (short runs)")
    parser.add_argument("--st-python", type=Path, default=DEFAULT_ST_PYTHON,
                        help="the interpreter of the st peer's virtualenv (default .bench-venvs/st/bin/python, "
                             "made by benchmarks/peers/setup_venvs.sh st)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="the per-run cache (default benchmarks/results/esci_runs)")
    parser.add_argument("--offshelf-only", action="store_true", help="no training: the offshelf rows only")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="the summary (default benchmarks/results/esci.md beside the JSON lines)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the per-run tables (default: temporary)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    args.config = args.config or DEFAULT_CONFIG
    args.methods = [] if args.offshelf_only else list(dict.fromkeys(args.methods + args.peers))
    if bad := [m for m in args.methods if m not in METHODS]:
        parser.error(f"--methods/--peers: {bad} not among {list(METHODS)}")
    if bad := [n for n in args.train_queries if n < 0]:
        parser.error(f"--train-queries: {bad} must be 0 (all) or positive")
    args.train_queries = list(dict.fromkeys(args.train_queries)) or [0]
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
