"""DashCLIP inputs: the catalog (image-title pairs), queries, relevance, the hold-out split, stage-2 pair sampling.

Everything is read through `feature_store.schema`, so a user's own tables work the same as the simulator's; a bad
row is an error naming its product_id (or query_id) rather than a failure deep inside training, a missing table or
a file that is not parquet (truncated, another format) a DataError naming the file.
A catalog needs product_id and what the model reads (`catalog_needs`): the title for text (model.modalities=text,
a text-only catalog), the image for pictures (model.product_input=image: an image-only catalog), both for the
multimodal model; aisle and created_ts are read where present (the aisle probe, the training window).
Held out from training, for evaluation:
- queries: a seeded share of the relevance queries (stage 2 never sees their labels; `stage2_split` says how many);
- products: those created after the world's training window (they have no relevance labels anyway) plus a seeded
  share of the others (stage 1 never trains on them; stage 2 leaves their pairs out only with
  stage2.exclude_heldout_products, the demo's setting).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from embeddings.config import EmbeddingConfig, ModelConfig
from embeddings.preprocess import decode_image, pixel_tensor
from feature_store.schema import PNG_SIGNATURE, SchemaError, read_table, table_columns


class DataError(ValueError):
    """A user table that cannot be used as it is: missing, a file that is not parquet, a row naming an unknown
    id, an empty title, an unreadable picture. Names the file (and the row); the entry points print it as one line
    and exit 2. (A table that breaks its contract is feature_store.schema's SchemaError.)"""


def _unreadable_file(path: Path) -> tuple[Path, Exception] | None:
    """The first parquet file under path (a file or a folder of parts) whose footer pyarrow cannot read."""
    files = [path] if path.is_file() else sorted(p for p in path.glob("*.parquet")
                                                 if p.is_file() and not p.name.startswith((".", "_")))
    for file in files:
        try:
            pq.read_metadata(file)
        except (pa.ArrowInvalid, OSError) as err:
            return file, err
    return None


@contextmanager
def reading(table: str, path: str | Path) -> Iterator[None]:
    """Around reads of a user table: a missing table, or a file pyarrow cannot open (truncated, not parquet: its
    own message, "magic bytes not found", names no file), becomes a DataError naming the file."""
    try:
        yield
    except FileNotFoundError as err:
        raise DataError(str(err)) from None
    except (pa.ArrowInvalid, OSError) as err:
        found = _unreadable_file(Path(path))
        if found is None:
            raise
        file, why = found
        raise DataError(f"table '{table}': {file} is not a readable parquet file (truncated or another format: "
                        f"{why})") from err


@dataclass
class Catalog:
    product_ids: np.ndarray  # [N] int64
    titles: list[str]  # "" for every product of a catalog without titles (a model reading pictures only)
    aisles: np.ndarray | None  # [N] str; None when the catalog has no aisle column (no aisle probe)
    created_ts: pd.Series | None  # [N] timestamp[UTC]; None when the catalog has no created_ts column
    pixels: torch.Tensor | None  # [N, 3, S, S] normalised, None for a text-only catalog
    skipped_images: list[int]  # product ids dropped for an unreadable image (only with skip_corrupt_images)

    def __len__(self) -> int:
        return len(self.product_ids)


def _raw_column(path: Path, column: str) -> pd.DataFrame:
    """product_id and one column straight from the parquet files, unvalidated (to locate bad rows)."""
    return ds.dataset(str(path), format="parquet").to_table(columns=["product_id", column]).to_pandas()


def _bad_image(png) -> str | None:
    if png is None:
        return "missing image"
    if not isinstance(png, (bytes, bytearray)) or len(png) == 0:
        return "empty image"
    if not bytes(png[:8]) == PNG_SIGNATURE:
        return "not a PNG file"
    return None


def catalog_needs(cfg: ModelConfig) -> tuple[bool, bool]:
    """(titles, images): which product columns a model reads. Text (modalities=text or product_input=title):
    titles only; product_input=image: pictures only; the multimodal model: both."""
    if cfg.modalities == "text" or cfg.product_input == "title":
        return True, False
    return cfg.product_input != "image", True


def products_path(data_dir: str | Path | None, products: str | Path | None = None) -> Path:
    """The products table: `products` when given (a parquet file or folder), else <data_dir>/raw/products."""
    if products is not None:
        return Path(products)
    if data_dir is None:
        raise DataError("no products table: give a data folder or the products table's path")
    return Path(data_dir) / "raw" / "products"


def load_catalog(data_dir: str | Path | None, image_size: int, with_images: bool = True,
                 skip_corrupt_images: bool = False, with_titles: bool = True,
                 products: str | Path | None = None) -> Catalog:
    """The products table (<data_dir>/raw/products, or the table at `products`) with decoded pictures (none when
    with_images is False: a text-only catalog) and titles (with_titles: required; otherwise read if present).

    A missing title or image column, when the model reads it, is a SchemaError naming it. An empty title is an
    error naming its product_id. A missing, empty or undecodable picture is an error naming its product_id, unless
    skip_corrupt_images: then the product is dropped, and counted and named in `skipped_images` (and printed),
    never silently."""
    path = products_path(data_dir, products)
    with reading("products", path):
        return _load_catalog(path, image_size, with_images, skip_corrupt_images, with_titles)


def _load_catalog(path: Path, image_size: int, with_images: bool, skip_corrupt_images: bool,
                  with_titles: bool) -> Catalog:
    try:
        df = read_table("products", path, columns=["title"] if with_titles else [],
                        if_present=["title", "aisle", "created_ts"]).to_pandas()
    except SchemaError as err:
        if err.column != "title":
            raise
        if err.problem.startswith("missing column"):
            raise SchemaError("products", "title", f"{err.problem}; the model reads product titles: a catalog "
                              f"without titles needs model.product_input=image", err.source) from None
        raw = _raw_column(path, "title")
        bad = raw[raw.title.isna() | (raw.title.fillna("").str.len() == 0)]
        if bad.empty:
            raise
        raise DataError(f"{path}: product_id {int(bad.product_id.iloc[0])}: empty title ({len(bad)} products "
                        f"have no title; every product needs one)") from err
    pixels, skipped = None, []
    if with_images:
        if "image" not in (has := table_columns("products", path)):
            raise SchemaError("products", "image", f"missing column (the table has: {', '.join(has)}); the model "
                              f"reads product pictures: a catalog without images needs model.modalities=text", path)
        raw = _raw_column(path, "image")
        if raw.product_id.duplicated().any() or len(raw) != len(df):
            raise DataError(f"{path}: the image column does not line up with the product ids")
        images = raw.set_index("product_id").image.reindex(df.product_id).tolist()
        decoded, keep = [], np.ones(len(df), dtype=bool)
        for i, (pid, png) in enumerate(zip(df.product_id, images)):
            problem = _bad_image(png)
            if problem is None:
                try:
                    decoded.append(decode_image(png, image_size))
                    continue
                except ValueError as e:
                    problem = f"unreadable image: {e}"
            if not skip_corrupt_images:
                raise DataError(f"{path}: product_id {int(pid)}: {problem}; fix the picture, or set "
                                f"skip_corrupt_images=true to drop such products (they are counted and reported)")
            keep[i] = False
            skipped.append(int(pid))
        if skipped:
            print(f"load_catalog: skipped {len(skipped)} products with an unreadable image (skip_corrupt_images): "
                  f"product_id {', '.join(map(str, skipped[:10]))}{' ...' if len(skipped) > 10 else ''}")
        df = df[keep].reset_index(drop=True)
        pixels = pixel_tensor(np.stack(decoded)) if decoded else torch.empty(0, 3, image_size, image_size)
    titles = df.title.tolist() if "title" in df else [""] * len(df)
    aisles = df.aisle.to_numpy() if "aisle" in df else None
    created = df.created_ts if "created_ts" in df else None
    return Catalog(df.product_id.to_numpy(), titles, aisles, created, pixels, skipped)


def load_queries(data_dir: str | Path | None, queries: str | Path | None = None) -> pd.DataFrame:
    """The queries table: <data_dir>/raw/queries, or the table at `queries` (a parquet file or folder)."""
    if queries is None and data_dir is None:
        raise DataError("no queries table: give a data folder or the queries table's path")
    path = Path(queries) if queries is not None else Path(data_dir) / "raw" / "queries"
    with reading("queries", path):
        return read_table("queries", path).to_pandas()


def load_relevance(data_dir: str | Path, catalog: Catalog, queries: pd.DataFrame) -> pd.DataFrame:
    """Relevance rows. A row naming a product or query that does not exist is an error naming that row; rows of
    products dropped by skip_corrupt_images are dropped with them."""
    path = Path(data_dir) / "raw" / "relevance"
    with reading("relevance", path):
        rel = read_table("relevance", path, columns=["label"]).to_pandas()  # `source`, when present, is not used
    known_products = np.concatenate([catalog.product_ids, np.asarray(catalog.skipped_images, dtype=np.int64)])
    for column, known in (("product_id", known_products), ("query_id", queries.query_id.to_numpy())):
        bad = ~rel[column].isin(known)
        if bad.any():
            row = rel[bad].iloc[0]
            raise DataError(f"{path}: {int(bad.sum())} relevance rows name an unknown {column}; first: row "
                            f"{int(np.flatnonzero(bad.to_numpy())[0])} (query_id={int(row.query_id)}, "
                            f"product_id={int(row.product_id)})")
    if catalog.skipped_images:
        rel = rel[rel.product_id.isin(catalog.product_ids)].reset_index(drop=True)
    return rel


def train_window_end(data_dir: str | Path) -> pd.Timestamp | None:
    """End of the world's training window (world.json splits), None for a user dataset without one."""
    meta = Path(data_dir) / "world.json"
    if not meta.is_file():
        return None
    return pd.Timestamp(json.loads(meta.read_text())["splits"]["train"][1])


@dataclass(frozen=True)
class Holdout:
    train_products: np.ndarray  # [N] bool over the catalog: True = stage 1 may train on it (and the aisle probe)
    heldout_queries: np.ndarray  # sorted query ids whose relevance labels no training stage reads
    new_products: np.ndarray  # [N] bool: created after the training window (no stage trains on them)


def make_holdout(catalog: Catalog, relevance: pd.DataFrame, data_dir: str | Path, query_share: float,
                 product_share: float, seed: int) -> Holdout:
    """The evaluation hold-out: products created after the training window plus a seeded `product_share` of the
    others; a seeded `query_share` of the relevance queries. Seeded per product / query id, so the split does not
    move when rows are added or dropped."""
    end = train_window_end(data_dir)
    if end is None or catalog.created_ts is None:
        old = np.ones(len(catalog), bool)
    else:
        old = (catalog.created_ts < end).to_numpy()
    train_products = old & (_uniform(catalog.product_ids, seed, 1) >= product_share)
    rel_queries = np.unique(relevance.query_id.to_numpy())
    heldout = rel_queries[_uniform(rel_queries, seed, 2) < query_share]
    return Holdout(train_products, np.sort(heldout), ~old)


@dataclass(frozen=True)
class Stage2Split:
    """Stage 2's relevance pairs, split by query: `train` (what the loss sees) and `valid` (every pair of the
    held-out queries: validation during training, and what the evaluation scores); `summary` says how much of
    the user's data each side holds, and why any pair is in neither."""

    train: pd.DataFrame
    valid: pd.DataFrame
    summary: str


def stage2_split(relevance: pd.DataFrame, catalog: Catalog, holdout: Holdout, query_share: float,
                 exclude_heldout_products: bool = False) -> Stage2Split:
    """Split the relevance pairs by query: the held-out queries' pairs validate, every other query's pairs train,
    except pairs of products created after the training window (never trained on) and, with
    exclude_heldout_products (the demo's setting), pairs of the seeded held-out products too."""
    held = relevance.query_id.isin(holdout.heldout_queries).to_numpy()
    allowed = holdout.train_products if exclude_heldout_products else ~holdout.new_products
    trainable = relevance.product_id.isin(catalog.product_ids[allowed]).to_numpy()
    train, valid = relevance[~held & trainable], relevance[held]
    n_q, n_vq = relevance.query_id.nunique(), valid.query_id.nunique()
    n = max(len(relevance), 1)
    summary = (f"stage 2 split by query: {n_vq} of {n_q} relevance queries held out for validation "
               f"({n_vq / max(n_q, 1):.1%}, heldout_query_share={query_share}), {len(valid)} of {len(relevance)} "
               f"pairs ({len(valid) / n:.1%}); training on {len(train)} pairs ({len(train) / n:.1%}) of "
               f"{train.query_id.nunique()} queries")
    if dropped := int((~held & ~trainable).sum()):
        why = ("held-out products (stage2.exclude_heldout_products) or products created after the training window"
               if exclude_heldout_products else "products created after the training window")
        summary += f"; {dropped} pairs ({dropped / n:.1%}) of {why} in neither"
    return Stage2Split(train, valid, summary)


def stage2_inputs(cfg: EmbeddingConfig, data_dir: str | Path) -> tuple[Catalog, pd.DataFrame, pd.DataFrame, Holdout]:
    """Catalog (titles and pictures as the model reads them: catalog_needs), queries, relevance and the hold-out
    split: what stage 2 trains on and the evaluation scores."""
    with_titles, with_images = catalog_needs(cfg.model)
    catalog = load_catalog(data_dir, cfg.model.image_size, with_images=with_images, with_titles=with_titles,
                           skip_corrupt_images=cfg.skip_corrupt_images)
    queries = load_queries(data_dir)
    relevance = load_relevance(data_dir, catalog, queries)
    holdout = make_holdout(catalog, relevance, data_dir, cfg.heldout_query_share, cfg.heldout_product_share, cfg.seed)
    return catalog, queries, relevance, holdout


def _uniform(ids: np.ndarray, seed: int, stream: int) -> np.ndarray:
    """A deterministic U[0, 1) draw per id (a hash of seed, stream and id)."""
    x = (np.asarray(ids, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.uint64((seed * 1_000_003 + stream) & 0xFFFFFFFF)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class Stage2Batch(NamedTuple):
    product_ids: np.ndarray  # [B] the products of the positive pairs
    pos_query_ids: np.ndarray  # [B] their positive queries
    neg_query_ids: np.ndarray  # [B, N] negative queries of each product (padding where neg_mask is False)
    neg_mask: np.ndarray  # [B, N] bool
    neg_product_ids: np.ndarray  # [B, M] negative products of each positive query (padding where False below)
    neg_product_mask: np.ndarray  # [B, M] bool


class PairSampler:
    """Stage-2 examples: each positive pair (a query labelled in `positive_labels` for a product: DashCLIP's
    highly relevant, label 2) with up to N negative queries of that product, drawn from `negative_labels` (0, and
    by option 1) with `negative_weights` as the relative sampling ratio between negative label types (the paper's
    Figure 2), and up to M negative products of that query (the products the query judged with a negative label,
    the same ratios): the hard negatives of the query -> product direction. Fewer than N (M) gets padding, masked
    out; in-batch negatives add more."""

    def __init__(self, relevance: pd.DataFrame, positive_labels: tuple[int, ...], negative_labels: tuple[int, ...],
                 negative_weights: tuple[float, ...], negatives: int, seed: int, negative_products: int = 0):
        if len(negative_labels) != len(negative_weights):
            raise ValueError("negative_labels and negative_weights must have the same length")
        self.rng = np.random.default_rng(seed)
        self.n_neg, self.n_neg_products = negatives, negative_products
        pos = relevance[relevance.label.isin(positive_labels)]
        self.pairs = pos[["product_id", "query_id"]].to_numpy()  # [P, 2]
        weight_of = dict(zip(negative_labels, negative_weights))
        neg = relevance[relevance.label.isin([k for k, w in weight_of.items() if w > 0])]
        self.negatives = self._by(neg, "product_id", "query_id", weight_of)  # product -> (queries, p)
        self.negative_products = self._by(neg, "query_id", "product_id", weight_of)  # query -> (products, p)

    @staticmethod
    def _by(neg: pd.DataFrame, key: str, value: str, weight_of: dict) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        out = {}
        for k, group in neg.groupby(key):
            w = group.label.map(weight_of).to_numpy(dtype=np.float64)
            out[int(k)] = (group[value].to_numpy(), w / w.sum())
        return out

    def __len__(self) -> int:
        return len(self.pairs)

    def _draw(self, keys: np.ndarray, pool: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.zeros((len(keys), n), dtype=np.int64)
        mask = np.zeros((len(keys), n), dtype=bool)
        for i, key in enumerate(keys):
            if n and int(key) in pool:
                values, p = pool[int(key)]
                k = min(n, len(values))
                ids[i, :k] = self.rng.choice(values, size=k, replace=False, p=p)
                mask[i, :k] = True
        return ids, mask

    def epoch(self, batch_size: int):
        """Yields a Stage2Batch per batch of positive pairs, in a fresh random order."""
        order = self.rng.permutation(len(self.pairs))
        for s in range(0, len(order), batch_size):
            batch = self.pairs[order[s : s + batch_size]]
            neg, mask = self._draw(batch[:, 0], self.negatives, self.n_neg)
            neg_p, mask_p = self._draw(batch[:, 1], self.negative_products, self.n_neg_products)
            yield Stage2Batch(batch[:, 0], batch[:, 1], neg, mask, neg_p, mask_p)
