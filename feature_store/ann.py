"""Nearest-neighbour retrieval of products by embedding, with FAISS (faiss-cpu), outside Feast.

Feast's SQLite vector search needs sqlite-vec, which it only loads on Python 3.10; this project runs 3.11, so
candidate generation and the embedding evaluation use FAISS directly:

    index = ProductIndex.build(product_ids, vectors)            # exact inner product (cosine for unit vectors)
    index = ProductIndex.from_embeddings("data/demo", "v1")     # the version's product_embeddings table
    ids, scores = index.search(query_vectors, k=10)             # [Q, k] int64 product ids, float32 scores

`kind="flat"` is exact (brute force, fine up to ~1M products on a laptop); `kind="hnsw"` is approximate and
faster for large catalogs. Rows with fewer than k products come back padded with id -1 and score -inf.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feature_store.schema import embedding_matrix, read_table


@dataclass
class ProductIndex:
    """A FAISS index over product vectors, searched by inner product (cosine similarity for unit vectors)."""

    index: object
    product_ids: np.ndarray  # [P] int64, the id of each index row

    @classmethod
    def build(cls, product_ids, vectors, kind: str = "flat", hnsw_m: int = 32, ef_search: int = 64,
              normalize: bool = False) -> "ProductIndex":
        """An index over `vectors` [P, D] (float32); `normalize` L2-normalises them first (cosine)."""
        import faiss  # loaded when an index is built, not by importing this module

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        product_ids = np.asarray(product_ids, dtype=np.int64)
        if vectors.ndim != 2 or len(vectors) != len(product_ids):
            raise ValueError(f"expected vectors [P, D] for {len(product_ids)} product ids, got {vectors.shape}")
        if normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        dim = vectors.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
        else:
            raise ValueError(f"unknown index kind {kind!r} (use 'flat' or 'hnsw')")
        index.add(vectors)
        return cls(index, product_ids)

    @classmethod
    def from_embeddings(cls, data_dir: str | Path, embedding_version: str, kind: str = "flat") -> "ProductIndex":
        """The index over data/<name>/embeddings/<version>/products (validated with its metadata's dim)."""
        folder = Path(data_dir) / "embeddings" / embedding_version
        dim = json.loads((folder / "metadata.json").read_text())["embedding_dim"]
        table = read_table("product_embeddings", folder / "products", embedding_dim=dim)
        return cls.build(table.column("product_id").to_numpy(), embedding_matrix(table.column("embedding"), dim),
                         kind=kind)

    def search(self, queries, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k products per query vector: ids [Q, k] int64 (-1 padding) and scores [Q, k] float32."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, rows = self.index.search(queries, k)
        ids = np.where(rows >= 0, self.product_ids[np.maximum(rows, 0)], -1)
        return ids, np.where(rows >= 0, scores, -np.inf).astype(np.float32)

    def __len__(self) -> int:
        return int(self.index.ntotal)
