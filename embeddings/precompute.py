"""Precompute DashCLIP embeddings for every product and query, as versioned tables the feature store reads.

    python -m embeddings.precompute --data data/demo --checkpoint data/demo/embeddings/checkpoints/stage2 [--version V]

Writes data/<name>/embeddings/<version>/{products,queries}/part-*.parquet (tables product_embeddings and
query_embeddings of feature_store.schema) and metadata.json {embedding_version, embedding_dim, model}, through a
temporary sibling folder renamed into place. A product's vector is available from its created_ts (event_ts); query
vectors from the start of time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from tqdm import tqdm

from embeddings.data import load_catalog, load_queries
from embeddings.model import DashClip, load_checkpoint, load_tokenizer, read_checkpoint_meta, tokenize
from feature_store.schema import write_table

ROWS_PER_PART = 50_000
EPOCH = pd.Timestamp("1970-01-01", tz="UTC")


def default_version(checkpoint: Path) -> str:
    """dashclip-<fingerprint of the weights>: the same checkpoint always gets the same version."""
    import hashlib

    digest = hashlib.sha256((Path(checkpoint) / "model.safetensors").read_bytes()).hexdigest()[:10]
    return f"dashclip-{digest}"


def _embedding_table(key: str, ids: np.ndarray, emb: np.ndarray, version: str, event_ts) -> pa.Table:
    flat = pa.array(emb.astype(np.float32).ravel(), pa.float32())
    offsets = pa.array(np.arange(0, emb.size + 1, emb.shape[1], dtype=np.int32))
    return pa.table({key: ids.astype(np.int64), "embedding": pa.ListArray.from_arrays(offsets, flat),
                     "model_version": pa.array([version] * len(ids)),
                     "event_ts": pa.array(event_ts, pa.timestamp("us", tz="UTC"))})


@torch.no_grad()
def precompute(data_dir: Path, checkpoint: Path, version: str | None = None, batch_size: int = 256,
               progress: bool = True) -> Path:
    data_dir, checkpoint = Path(data_dir), Path(checkpoint)
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    cfg = model.cfg
    version = version or default_version(checkpoint)
    tokenizer = load_tokenizer(cfg)
    out = data_dir / "embeddings" / version
    tmp = out.parent / f".{version}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        catalog = load_catalog(data_dir, cfg.image_size, with_images=model.product_input != "title")
        for part, s in enumerate(tqdm(range(0, len(catalog), ROWS_PER_PART), desc="product parts", disable=True)):
            rows = range(s, min(s + ROWS_PER_PART, len(catalog)))
            emb = []
            for b in tqdm(range(rows.start, rows.stop, batch_size), desc="products", unit="batch", disable=not progress):
                sl = slice(b, min(b + batch_size, rows.stop))
                ids, mask = tokenize(tokenizer, catalog.titles[sl], cfg.max_title_len)
                px = None if catalog.pixels is None else catalog.pixels[sl]
                emb.append(model.encode_product(ids, mask, px).numpy())
            table = _embedding_table("product_id", catalog.product_ids[rows.start : rows.stop], np.concatenate(emb),
                                     version, catalog.created_ts.iloc[rows.start : rows.stop].to_numpy())
            write_table("product_embeddings", table, tmp / "products", part=part, embedding_dim=model.embed_dim)
        queries = load_queries(data_dir)
        texts, qids = queries.query_text.tolist(), queries.query_id.to_numpy()
        for part, s in enumerate(range(0, len(texts), ROWS_PER_PART)):
            emb = []
            stop = min(s + ROWS_PER_PART, len(texts))
            for b in tqdm(range(s, stop, 4 * batch_size), desc="queries", unit="batch", disable=not progress):
                ids, mask = tokenize(tokenizer, texts[b : min(b + 4 * batch_size, stop)], cfg.max_query_len)
                emb.append(model.encode_query(ids, mask).numpy())
            table = _embedding_table("query_id", qids[s:stop], np.concatenate(emb), version,
                                     np.full(stop - s, EPOCH.to_datetime64()))
            write_table("query_embeddings", table, tmp / "queries", part=part, embedding_dim=model.embed_dim)
        meta = {"embedding_version": version, "embedding_dim": model.embed_dim, "checkpoint": str(checkpoint),
                "model": read_checkpoint_meta(checkpoint)["model_config"],
                "products": len(catalog), "queries": len(texts)}
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embeddings.precompute", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a stage-2 (or any DashCLIP) checkpoint folder")
    parser.add_argument("--version", default=None, help="embedding version name (default: dashclip-<weights hash>)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out = precompute(args.data, args.checkpoint, args.version, args.batch_size, progress=not args.no_progress)
    meta = json.loads((out / "metadata.json").read_text())
    print(f"{meta['products']:,} products and {meta['queries']:,} queries embedded ({meta['embedding_dim']}-d) "
          f"in {time.perf_counter() - started:.1f} s -> {out}")
    print(meta["embedding_version"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
