"""The pCTR features: which store feature fills which training-set column, the defaults, and the one function
(`assemble`) that turns looked-up values into training-set columns, used by the offline (training sets) and
the online path alike so that both give the same bytes for the same values.

Training-set columns (schema table `training_set`) come from three places:
- the request (the impression row offline, the caller online): ids, ts, position, device, discount,
  store_distance_km, and the labels offline;
- the feature store (Feast feature views): product attributes, rating, counts, history, embeddings;
- derived here: product_age_days = (ts - created_ts) / 1 day.
A missing store value (an unknown entity, a product before its vector exists, a user without purchases in the
window) takes the default in DEFAULTS (embeddings: the zero vector).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.derive import DAY_US
from feature_store.schema import COUNT_ENTITIES, TABLES, count_feature_names, embedding_array, embedding_matrix

ID_COLUMNS = ("impression_id", "request_id", "user_id", "query_id", "product_id", "ad_id", "campaign_id",
              "advertiser_id")
LABELS = ("click", "conversion")
CONTEXT = ("ts", "position", "device", "discount", "store_distance_km")  # request-time fields
ENTITY_KEYS = ("user_id", "query_id", "product_id", "ad_id")  # the join keys of the feature views
EMBEDDINGS = ("product_embedding", "query_embedding", "history_embedding")

# Feature table (schema name) -> the features the training set takes from it.
STORE_TABLES: dict[str, tuple[str, ...]] = {
    "product_attribute_features": ("aisle", "brand", "store_id", "price", "created_us"),
    "product_rating_features": ("rating", "rating_count"),
    **{f"{e}_count_features": count_feature_names(e) for e in COUNT_ENTITIES},
    "user_history_features": ("history_embedding", "history_count"),
    "product_embedding_features": ("product_embedding",),
    "query_embedding_features": ("query_embedding",),
}
STORE_FEATURES = tuple(f for fs in STORE_TABLES.values() for f in fs)
STORE_TYPES = {f: TABLES[t].column(f).dtype for t, fs in STORE_TABLES.items() for f in fs}

# Defaults of store features for unknown entities; the same online and offline (metadata.json lists them).
DEFAULTS: dict[str, object] = {
    "aisle": "", "brand": "", "store_id": 0, "price": 0.0, "rating": 0.0, "rating_count": 0,
    "product_age_days": 0.0, "history_count": 0.0,
    **{name: 0.0 for e in COUNT_ENTITIES for name in count_feature_names(e)},
    **{name: "zeros(embedding_dim)" for name in EMBEDDINGS},
}

TRAINING_COLUMNS = TABLES["training_set"].names
# What the online path returns: every training-set feature column except the ids, ts and labels.
ONLINE_COLUMNS = tuple(c for c in TRAINING_COLUMNS if c not in ID_COLUMNS + LABELS + ("ts",))


def feature_groups() -> dict[str, list[str]]:
    """The training-set columns by role, for metadata.json and the ranking package."""
    counts = [n for e in COUNT_ENTITIES for n in count_feature_names(e)]
    return {
        "ids": list(ID_COLUMNS) + ["store_id"],
        "timestamp": ["ts"],
        "categorical": ["position", "device", "aisle", "brand"],
        "dense": ["price", "discount", "rating", "rating_count", "store_distance_km", "product_age_days"],
        "counts": counts,
        "history": ["history_count"],
        "embeddings": list(EMBEDDINGS),
        "labels": list(LABELS),
        "request": list(ID_COLUMNS) + list(CONTEXT),
        "store": [c for c in STORE_FEATURES if c != "created_us"] + ["product_age_days"],
    }


def _as_array(values) -> pa.Array:
    """A column given as a ChunkedArray, an Array or a sequence, as one pa.Array."""
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if isinstance(values, pa.Array):
        return values
    return pa.array(values)


def fill_embedding(values, n: int, dim: int) -> pa.Array:
    """list<float32> with nulls -> list<float32> of `dim` per row, zeros for nulls (values copied bit for bit)."""
    col = _as_array(values)
    if not col.null_count and n:  # the usual case online: every vector known, copied once
        matrix = embedding_matrix(col, dim)
        if matrix.shape == (n, dim):
            return embedding_array(matrix)
    out = np.zeros((n, dim), np.float32)
    valid = col.is_valid().to_numpy(zero_copy_only=False) if n else np.zeros(0, bool)
    if valid.any():
        out[valid] = embedding_matrix(col.filter(pa.array(valid)), dim)
    return embedding_array(out)


def product_age_days(ts, created_us) -> pa.Array:
    """(ts - created) in days as float32, 0 where the product is unknown; never negative."""
    ts_us = _as_array(ts).cast(pa.int64()).to_numpy(zero_copy_only=False)
    created = _as_array(created_us).cast(pa.int64())
    known = created.is_valid().to_numpy(zero_copy_only=False)
    created = created.fill_null(0).to_numpy(zero_copy_only=False)
    age = np.where(known, np.maximum(ts_us - created, 0) / DAY_US, 0.0)
    return pa.array(age.astype(np.float32))


def _cast(col: pa.Array, dtype: pa.DataType) -> pa.Array:
    return col if col.type == dtype else col.cast(dtype)


def assemble(request: dict, store: dict, dim: int, columns=TRAINING_COLUMNS) -> pa.Table:
    """Training-set columns (those in `columns`, schema order and dtypes) from request columns and looked-up
    store features (None / nulls where missing). `request` holds at least ts and the other wanted request
    columns; `store` holds every name in STORE_FEATURES."""
    schema = TABLES["training_set"]
    n = len(request["ts"])
    out = {}
    for name in columns:
        dtype = schema.column(name).dtype
        if name == "product_age_days":
            out[name] = product_age_days(request["ts"], store["created_us"])
        elif name in EMBEDDINGS:
            out[name] = fill_embedding(store[name], n, dim)
        elif name in STORE_FEATURES:  # no cast or fill where nothing changes: per-call costs add up online
            col = _cast(_as_array(store[name]), dtype)
            out[name] = pc.fill_null(col, pa.scalar(DEFAULTS[name], dtype)) if col.null_count else col
        else:
            out[name] = _cast(_as_array(request[name]), dtype)
    return pa.table(out, schema=pa.schema([pa.field(c, schema.column(c).dtype) for c in columns]))

