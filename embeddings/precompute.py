"""Precompute DashCLIP embeddings for every product and query, as versioned tables the feature store reads.

    python -m embeddings.precompute --data data/demo --checkpoint data/demo/embeddings/checkpoints/stage2 [--version V]
    python -m embeddings.precompute --checkpoint CKPT --products new_products.parquet --out embeddings/new  # serving
    python -m embeddings.precompute --data data/demo --checkpoint CKPT --products P --queries Q [--version V]

Writes <out> (default data/<name>/embeddings/<version>/): {products,queries}/part-*.parquet (tables
product_embeddings and query_embeddings of feature_store.schema: id, embedding list<float32>, model_version,
event_ts) and metadata.json {embedding_version, embedding_dim, model, ...}, through a temporary sibling folder renamed
into place, so a reader never sees half a version. The version defaults to dashclip-<hash of the weights>: the same
checkpoint always gets the same name, another checkpoint never does.

Inputs: the data folder's raw/products and raw/queries, or any products / queries table given by --products /
--queries (a parquet file or folder, validated like raw/: e.g. new products at serving time). With --products or
--queries and no --data, only the tables given are embedded (the other folder is left out of <out>).
A products table needs product_id and what the model reads (titles for a text model, pictures for an image model);
created_ts and the impressions are optional.

event_ts (when the vector may be used, for point-in-time joins): a product's created_ts (the epoch for a catalog
without created_ts); a query's first impression minus one day (the query existed before anyone was shown ads for
it), or 1970-01-01 for a query with no impressions (or without an impressions table).

    torchrun --nproc_per_node N -m embeddings.precompute --data data/demo --checkpoint CKPT

shards the work: the batches of every part are dealt round-robin to the ranks (batch i to rank i % N), rank 0
collects each part's embeddings and alone writes the one version folder, as one process would (the same batches,
so the same vectors); the other ranks wait until it is in place.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm import tqdm

from core.config import ConfigError, exit_on
from core.files import staged_folder
from embeddings.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_meta
from embeddings.config import set_threads
from embeddings.data import DataError, catalog_needs, load_catalog, load_queries, reading
from embeddings.distributed import Ranks, barrier, close, collect, init_from_env
from embeddings.model import DashClip
from embeddings.preprocess import tokenize
from embeddings.pretrained import load_tokenizer
from feature_store.schema import SchemaError, read_table, write_table

ROWS_PER_PART = 50_000
EPOCH_US = 0  # 1970-01-01T00:00:00Z
DAY_US = 86_400 * 1_000_000


def default_version(checkpoint: Path) -> str:
    """dashclip-<first 10 hex digits of the weights' sha256>."""
    digest = hashlib.sha256()
    with open(Path(checkpoint) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"dashclip-{digest.hexdigest()[:10]}"


def _embedding_table(key: str, ids: np.ndarray, emb: np.ndarray, version: str, event_us: np.ndarray) -> pa.Table:
    flat = pa.array(emb.astype(np.float32).ravel(), pa.float32())
    offsets = pa.array(np.arange(0, emb.size + 1, emb.shape[1], dtype=np.int32))
    return pa.table({key: ids.astype(np.int64), "embedding": pa.ListArray.from_arrays(offsets, flat),
                     "model_version": pa.array([version] * len(ids), pa.string()),
                     "event_ts": pa.array(event_us.astype(np.int64), pa.timestamp("us", tz="UTC"))})


def _embed_part(start: int, stop: int, batch: int, encode, ranks: Ranks, bar: tqdm) -> np.ndarray | None:
    """encode(slice) -> [n, D] over rows [start, stop) in batches of `batch` rows; under torchrun each rank encodes
    every N-th batch and rank 0 gets the part's [stop - start, D] (the others None)."""
    slices = [slice(b, min(b + batch, stop)) for b in range(start, stop, batch)]
    mine = {}
    for i, sl in enumerate(slices):
        if i % ranks.world == ranks.rank:
            mine[i] = encode(sl)
            bar.update(sl.stop - sl.start)
    parts = collect(mine, ranks)
    if parts is None:
        return None
    bar.update(sum(len(parts[i]) for i in parts if i not in mine))  # the other ranks' rows
    return np.concatenate([parts[i] for i in range(len(slices))])


def query_event_us(data_dir: Path | None, query_ids: np.ndarray) -> np.ndarray:
    """[Q] int64 microseconds: first impression of each query minus one day, else the epoch."""
    out = np.full(len(query_ids), EPOCH_US, dtype=np.int64)
    folder = None if data_dir is None else Path(data_dir) / "raw" / "impressions"
    if folder is None or not folder.is_dir():
        return out
    with reading("impressions", folder):
        imp = read_table("impressions", folder, columns=["query_id", "ts"])
    first = imp.group_by("query_id").aggregate([("ts", "min")])
    qid = first.column("query_id").to_numpy()
    ts = pc.cast(first.column("ts_min"), pa.int64()).to_numpy()
    pos = pd.Index(query_ids).get_indexer(qid)
    known = pos >= 0
    out[pos[known]] = np.maximum(ts[known] - DAY_US, EPOCH_US)
    return out


@torch.no_grad()
def precompute(data_dir: Path | None, checkpoint: Path, version: str | None = None, batch_size: int = 256,
               progress: bool = True, products: Path | None = None, queries: Path | None = None,
               out: Path | None = None, ranks: Ranks = Ranks()) -> Path:
    """Embed every product and query with a checkpoint; returns the version folder.

    products / queries: tables to embed instead of <data_dir>/raw/{products,queries}; without data_dir only the
    tables given are embedded. out: the version folder (default <data_dir>/embeddings/<version>).
    ranks: under torchrun, this rank's share of the batches; rank 0 writes (see the module docstring)."""
    checkpoint = Path(checkpoint)
    data_dir = None if data_dir is None else Path(data_dir)
    if data_dir is None and products is None and queries is None:
        raise ConfigError("precompute needs a data folder or a products / queries table")
    if data_dir is None and out is None:
        raise ConfigError("precompute without a data folder needs an output folder (--out)")
    model: DashClip
    model, cfg = load_checkpoint(checkpoint)
    model.eval()
    version = version or default_version(checkpoint)
    if not version or "/" in version or version.startswith("."):
        raise ConfigError(f"--version {version!r}: a version is a plain folder name")
    tokenizer = load_tokenizer(cfg)
    dim = model.embed_dim
    out = Path(out) if out is not None else data_dir / "embeddings" / version
    do_products = data_dir is not None or products is not None
    do_queries = data_dir is not None or queries is not None
    n_products = n_queries = 0
    progress = progress and ranks.is_main
    writer = staged_folder(out) if ranks.is_main else contextlib.nullcontext()
    with writer as tmp:  # an older run of the same version is replaced whole
        if do_products:
            with_titles, with_images = catalog_needs(model.cfg)
            catalog = load_catalog(data_dir, cfg.image_size, with_images=with_images, with_titles=with_titles,
                                   products=products)
            if catalog.skipped_images:
                raise DataError("precompute embeds every product; fix the unreadable pictures first")
            n_products = len(catalog)
            if catalog.created_ts is None:
                created_us = np.full(len(catalog), EPOCH_US, dtype=np.int64)
            else:
                created_us = pc.cast(pa.array(catalog.created_ts, pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy()
            def encode_products(sl: slice) -> np.ndarray:
                ids, mask = tokenize(tokenizer, catalog.titles[sl], cfg.max_title_len)
                px = None if catalog.pixels is None else catalog.pixels[sl]
                return model.encode_product(ids, mask, px).numpy()  # [b, D]

            batches = tqdm(total=len(catalog), desc="products", unit="product", disable=not progress)
            for part, start in enumerate(range(0, len(catalog), ROWS_PER_PART)):
                stop = min(start + ROWS_PER_PART, len(catalog))
                emb = _embed_part(start, stop, batch_size, encode_products, ranks, batches)
                if ranks.is_main:
                    table = _embedding_table("product_id", catalog.product_ids[start:stop], emb, version,
                                             created_us[start:stop])
                    write_table("product_embeddings", table, tmp / "products", part=part, embedding_dim=dim)
            batches.close()
        if do_queries:
            table_q = load_queries(data_dir, queries)
            texts, qids = table_q.query_text.tolist(), table_q.query_id.to_numpy()
            n_queries = len(texts)
            event_us = query_event_us(data_dir, qids)
            def encode_queries(sl: slice) -> np.ndarray:
                ids, mask = tokenize(tokenizer, texts[sl], cfg.max_query_len)
                return model.encode_query(ids, mask).numpy()  # [b, D]

            batches = tqdm(total=len(texts), desc="queries", unit="query", disable=not progress)
            for part, start in enumerate(range(0, len(texts), ROWS_PER_PART)):
                stop = min(start + ROWS_PER_PART, len(texts))
                emb = _embed_part(start, stop, 4 * batch_size, encode_queries, ranks, batches)  # short: bigger batches
                if ranks.is_main:
                    table = _embedding_table("query_id", qids[start:stop], emb, version, event_us[start:stop])
                    write_table("query_embeddings", table, tmp / "queries", part=part, embedding_dim=dim)
            batches.close()
        meta = {"embedding_version": version, "embedding_dim": dim, "checkpoint": str(checkpoint),
                "model": read_checkpoint_meta(checkpoint)["model_config"],
                "products": n_products, "queries": n_queries,
                "inputs": {"products": str(products) if products is not None else (
                               str(data_dir / "raw" / "products") if do_products else None),
                           "queries": str(queries) if queries is not None else (
                               str(data_dir / "raw" / "queries") if do_queries else None)},
                "created_at": pd.Timestamp.now(tz="UTC").isoformat()}
        if ranks.is_main:
            (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    barrier(ranks)  # the version folder is in place before any rank returns it
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embeddings.precompute", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="data/<name>: its raw/ tables are embedded into "
                        "its embeddings/<version>/ (unless --products / --queries / --out say otherwise)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="a stage-2 (or any DashCLIP) checkpoint folder")
    parser.add_argument("--products", type=Path, default=None,
                        help="a products table (parquet file or folder) to embed instead of <data>/raw/products")
    parser.add_argument("--queries", type=Path, default=None,
                        help="a queries table (parquet file or folder) to embed instead of <data>/raw/queries")
    parser.add_argument("--out", type=Path, default=None,
                        help="the version folder to write (default <data>/embeddings/<version>)")
    parser.add_argument("--version", default=None, help="embedding version name (default: dashclip-<weights hash>)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.data is None and args.products is None and args.queries is None:
        parser.error("give --data, or the tables to embed (--products and/or --queries)")
    if args.data is None and args.out is None:
        parser.error("without --data, --out says where to write the embeddings")
    set_threads(args.threads)
    ranks = init_from_env()  # torchrun: one process per rank, rank 0 writes
    started = time.perf_counter()
    try:
        out = precompute(args.data, args.checkpoint, args.version, args.batch_size, progress=not args.no_progress,
                         products=args.products, queries=args.queries, out=args.out, ranks=ranks)
    finally:
        close(ranks)
    if not ranks.is_main:
        return 0
    meta = json.loads((out / "metadata.json").read_text())
    seconds = time.perf_counter() - started
    print(f"{meta['products']:,} products and {meta['queries']:,} queries embedded ({meta['embedding_dim']}-d) "
          f"in {seconds:.1f} s -> {out}")
    print(meta["embedding_version"])
    return 0


if __name__ == "__main__":
    exit_on(main, ConfigError, DataError, SchemaError, CheckpointError)  # bad input: one line, exit status 2
