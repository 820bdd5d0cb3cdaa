"""DashCLIP inputs: the catalog (image-title pairs), queries, relevance pairs, hold-out splits, pair sampling.

Everything is read through `feature_store.schema`, so a user's own tables work the same as the simulator's.
Held out from training, for evaluation: a seeded share of the relevance queries (stage 2 never sees them) and the
products created after the training window plus a seeded share of the others (neither stage sees them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from embeddings.model import preprocess_images
from feature_store.schema import read_table


@dataclass
class Catalog:
    product_ids: np.ndarray  # [N] int64
    titles: list[str]
    aisles: np.ndarray  # [N] str
    created_ts: pd.Series
    pixels: torch.Tensor | None  # [N, 3, S, S] normalised, None for a text-only catalog
    skipped_images: list[int]  # product ids whose image could not be decoded (only with skip_corrupt_images)

    def __len__(self) -> int:
        return len(self.product_ids)


def load_catalog(data_dir: Path, image_size: int, with_images: bool = True,
                 skip_corrupt_images: bool = False) -> Catalog:
    """Products with decoded pictures. An unreadable picture is an error naming its product_id, unless
    skip_corrupt_images: then the product is dropped, counted and reported in `skipped_images`."""
    columns = ["title", "aisle", "created_ts"] + (["image"] if with_images else [])
    path = Path(data_dir) / "raw" / "products"
    df = read_table("products", path, columns=columns).to_pandas()
    pixels, skipped = None, []
    if with_images:
        decoded, keep = [], np.ones(len(df), dtype=bool)
        for i, (pid, png) in enumerate(zip(df.product_id, df.image)):
            try:
                decoded.append(preprocess_images([png], image_size))
            except ValueError as e:
                if not skip_corrupt_images:
                    raise ValueError(f"{path}: product_id {pid}: unreadable image ({e}); fix it or pass "
                                     f"skip_corrupt_images=true to drop such products") from e
                keep[i] = False
                skipped.append(int(pid))
        df = df[keep].reset_index(drop=True)
        pixels = torch.cat(decoded) if decoded else torch.empty(0, 3, image_size, image_size)
    return Catalog(df.product_id.to_numpy(), df.title.tolist(), df.aisle.to_numpy(), df.created_ts, pixels, skipped)


def load_queries(data_dir: Path) -> pd.DataFrame:
    return read_table("queries", Path(data_dir) / "raw" / "queries").to_pandas()


def load_relevance(data_dir: Path, catalog: Catalog, queries: pd.DataFrame) -> pd.DataFrame:
    """Relevance rows; a row naming a product or query that does not exist is an error naming that row."""
    path = Path(data_dir) / "raw" / "relevance"
    rel = read_table("relevance", path).to_pandas()
    for column, known in (("product_id", catalog.product_ids), ("query_id", queries.query_id.to_numpy())):
        bad = ~rel[column].isin(known)
        if bad.any():
            row = rel[bad].iloc[0]
            raise ValueError(f"{path}: {int(bad.sum())} relevance rows name an unknown {column}; first: "
                             f"query_id={row.query_id}, product_id={row.product_id}")
    return rel


def train_window_end(data_dir: Path) -> pd.Timestamp | None:
    """End of the world's training window (world.json), None for a user dataset without one."""
    meta = Path(data_dir) / "world.json"
    if not meta.is_file():
        return None
    return pd.Timestamp(json.loads(meta.read_text())["splits"]["train"][1])


@dataclass(frozen=True)
class Holdout:
    train_products: np.ndarray  # bool mask over the catalog
    heldout_queries: np.ndarray  # query ids never used in training


def make_holdout(catalog: Catalog, relevance: pd.DataFrame, data_dir: Path, query_share: float,
                 product_share: float, seed: int) -> Holdout:
    rng = np.random.default_rng(seed)
    end = train_window_end(data_dir)
    old = np.ones(len(catalog), bool) if end is None else (catalog.created_ts < end).to_numpy()
    train_products = old & (rng.random(len(catalog)) >= product_share)
    rel_queries = np.unique(relevance.query_id.to_numpy())
    heldout = rng.choice(rel_queries, size=int(round(query_share * len(rel_queries))), replace=False)
    return Holdout(train_products, np.sort(heldout))


class PairSampler:
    """Stage-2 examples: each positive pair (a query labelled in `positive_labels` for a product) with up to N
    negative queries of that product drawn from `negative_labels` with `negative_weights` (the relative sampling
    ratio between negative label types). Missing negatives are padded and masked; in-batch negatives add more."""

    def __init__(self, relevance: pd.DataFrame, positive_labels: tuple[int, ...], negative_labels: tuple[int, ...],
                 negative_weights: tuple[float, ...], negatives: int, seed: int):
        if len(negative_labels) != len(negative_weights):
            raise ValueError("negative_labels and negative_weights must have the same length")
        self.rng = np.random.default_rng(seed)
        self.n_neg = negatives
        pos = relevance[relevance.label.isin(positive_labels)]
        self.pairs = pos[["product_id", "query_id"]].to_numpy()  # [P, 2]
        self.negatives: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        neg = relevance[relevance.label.isin(negative_labels)]
        weight_of = dict(zip(negative_labels, negative_weights))
        for pid, group in neg.groupby("product_id"):
            w = group.label.map(weight_of).to_numpy(dtype=np.float64)
            self.negatives[int(pid)] = (group.query_id.to_numpy(), w / w.sum())

    def __len__(self) -> int:
        return len(self.pairs)

    def epoch(self, batch_size: int):
        """Yields (product_ids [B], pos_query_ids [B], neg_query_ids [B, N], neg_mask [B, N]) per batch."""
        order = self.rng.permutation(len(self.pairs))
        for s in range(0, len(order), batch_size):
            batch = self.pairs[order[s : s + batch_size]]
            neg = np.zeros((len(batch), self.n_neg), dtype=np.int64)
            mask = np.zeros((len(batch), self.n_neg), dtype=bool)
            for i, pid in enumerate(batch[:, 0]):
                if int(pid) in self.negatives and self.n_neg:
                    qids, p = self.negatives[int(pid)]
                    k = min(self.n_neg, len(qids))
                    neg[i, :k] = self.rng.choice(qids, size=k, replace=False, p=p)
                    mask[i, :k] = True
            yield batch[:, 0], batch[:, 1], neg, mask
