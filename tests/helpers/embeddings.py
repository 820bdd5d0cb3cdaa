"""Stand-in embedding tables: seeded random unit vectors in the layout DashCLIP's precompute writes.

For testing and benchmarking the feature store without a trained encoder:

    python -m tests.helpers.embeddings --data data/tiny --version random16 --dim 16

writes data/<name>/embeddings/<version>/{products,queries}/part-00000.parquet and metadata.json. Products get
their created_ts as event_ts, queries the start of the first impression day (before any impression).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.derive import DAY_US
from feature_store.schema import TIMESTAMP, embedding_array, read_table, write_table


def random_unit(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_standin_embeddings(data_dir: str | Path, version: str, dim: int = 16, seed: int = 0,
                             product_event_us: dict[int, int] | None = None) -> Path:
    """Write seeded random embedding tables for every product and query; returns the version folder.

    `product_event_us` overrides the event time (microseconds) of some products, e.g. a vector that arrives late.
    """
    data_dir = Path(data_dir)
    rng = np.random.default_rng(seed)
    products = read_table("products", data_dir / "raw" / "products", columns=["created_ts"])
    queries = read_table("queries", data_dir / "raw" / "queries", columns=[])
    impressions = read_table("impressions", data_dir / "raw" / "impressions", columns=["ts"])
    first_day_us = int(pc.min(impressions.column("ts")).cast(pa.int64()).as_py()) // DAY_US * DAY_US
    out = data_dir / "embeddings" / version
    pid = products.column("product_id").to_numpy()
    event = products.column("created_ts").cast(pa.int64()).to_numpy().copy()
    for product, us in (product_event_us or {}).items():
        event[pid == product] = us
    write_table("product_embeddings", pa.table({
        "product_id": pa.array(pid), "embedding": embedding_array(random_unit(len(pid), dim, rng)),
        "model_version": pa.array([version] * len(pid)),
        "event_ts": pa.array(event, pa.int64()).cast(TIMESTAMP)}), out / "products", embedding_dim=dim)
    qid = queries.column("query_id").to_numpy()
    write_table("query_embeddings", pa.table({
        "query_id": pa.array(qid), "embedding": embedding_array(random_unit(len(qid), dim, rng)),
        "model_version": pa.array([version] * len(qid)),
        "event_ts": pa.array(np.full(len(qid), first_day_us), pa.int64()).cast(TIMESTAMP)}),
        out / "queries", embedding_dim=dim)
    (out / "metadata.json").write_text(json.dumps({
        "embedding_version": version, "embedding_dim": dim,
        "model": {"name": "random-standin", "seed": seed}}, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_standin_embeddings(args.data, args.version, args.dim, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
