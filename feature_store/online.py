"""Online features for serving: one request (a user, a query, N candidate products) -> every model feature.

    online = OnlineFeatures("data/demo", "v1")        # after build and materialize
    feats = online.get(user_id=7, query_id=42, product_ids=[...], ad_ids=[...],
                       context={"ts": now, "device": "app", "position": [1, 2, ...], "discount": [...],
                                "store_distance_km": [...]})
    feats["product_embedding"]  # float32 [N, D]; feats["price"]  # float32 [N]; ...

One `get_online_features` call reads all views for the N candidates. Values are assembled by the same function as
the training sets (feature_store.features.assemble) with the same defaults for unknown entities, so the online
features of a request equal its training-set features (bit for bit) when the online store was materialized up
to the request time. Request-time fields (ts, position, device, discount, store_distance_km) come from the caller:
each a scalar for the whole request or one value per candidate.
"""

from __future__ import annotations

import operator
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from feature_store.config import FeatureStoreConfig
from feature_store.features import (
    CONTEXT, EMBEDDINGS, ENTITY_KEYS, ONLINE_COLUMNS, STORE_FEATURES, STORE_TYPES, assemble,
)
from feature_store.schema import TIMESTAMP, SchemaError, embedding_array
from feature_store.store import FeatureRepo, check_entity_rows

REQUEST = "online request"


class OnlineFeatures:
    """Reads one request's features from the online store of a data directory and embedding version."""

    def __init__(self, data_dir: str | Path, embedding_version: str, config: FeatureStoreConfig | None = None):
        self.repo = FeatureRepo(data_dir, embedding_version, config or FeatureStoreConfig(progress=False))
        self.embedding_dim = self.repo.embedding_dim()
        self.feature_refs = self.repo.feature_refs()
        self.store = self.repo.store
        self._types = STORE_TYPES
        self.columns = ONLINE_COLUMNS

    def get(self, user_id: int, query_id: int, product_ids, context: dict, ad_ids=None,
            as_arrow: bool = False):
        """Features of N candidates: a dict of numpy arrays ([N] per column, [N, D] float32 per embedding), or a
        pyarrow Table with the training set's dtypes (`as_arrow=True`). Columns: ONLINE_COLUMNS."""
        product_ids = list(product_ids)
        n = len(product_ids)
        if ad_ids is None:
            ad_ids = context.get("ad_id")
        if ad_ids is None:
            raise SchemaError(REQUEST, "ad_id", "missing: pass ad_ids=[...] (one per candidate) or context['ad_id']")
        missing = [c for c in CONTEXT if c not in context]
        if missing:
            raise SchemaError(REQUEST, missing[0], f"missing request-time context field(s) {missing}")
        ts = _timestamp(context["ts"])
        rows = check_entity_rows(pa.table({
            "ts": pa.array([ts.value] * n, pa.int64()).cast(TIMESTAMP),
            "user_id": _id_array([user_id] * n, "user_id"), "query_id": _id_array([query_id] * n, "query_id"),
            "product_id": _id_array(product_ids, "product_id"),
            "ad_id": _id_array(_per_candidate(ad_ids, n, "ad_id"), "ad_id"),
        }), REQUEST)
        if n:
            response = self.store.get_online_features(
                features=self.feature_refs, entity_rows={k: rows.column(k).to_pylist() for k in ENTITY_KEYS},
            ).proto
            results = dict(zip(response.metadata.feature_names.val, response.results))
            store = {f: self._store_column(f, results[f].values, n) for f in STORE_FEATURES}
        else:  # no candidates: empty columns, no store call
            store = {f: pa.nulls(0, self._types[f]) for f in STORE_FEATURES}
        request = {"ts": rows.column("ts")}
        for name in CONTEXT[1:]:
            request[name] = pa.array(_per_candidate(context[name], n, name))
        table = assemble(request, store, self.embedding_dim, columns=self.columns)
        if as_arrow:
            return table
        out = {}
        for name in self.columns:
            col = table.column(name).combine_chunks()
            if name in EMBEDDINGS:
                out[name] = col.values.to_numpy().reshape(n, self.embedding_dim)
            else:
                out[name] = col.to_numpy(zero_copy_only=False)
        return out

    def _store_column(self, name: str, values, n: int) -> pa.Array:
        """Feast value protos -> an arrow column with nulls where the store has nothing (read directly, which
        is several times faster than OnlineResponse.to_dict for embeddings; float32 values stay bit-exact)."""
        dtype = self._types[name]
        kinds = [v.WhichOneof("val") for v in values]
        if name in EMBEDDINGS:
            dim = self.embedding_dim
            out = np.zeros((n, dim), np.float32)
            valid = np.array([k is not None for k in kinds], bool)
            for i in np.flatnonzero(valid):
                vector = _float_list_values(values[i].float_list_val)
                if len(vector) != dim:
                    raise SchemaError(REQUEST, name, f"online store holds a vector of length {len(vector)}, "
                                                     f"the registered embedding_dim is {dim}: materialize again")
                out[i] = vector
            return embedding_array(out, null_rows=~valid)
        return pa.array([None if k is None else getattr(v, k) for v, k in zip(values, kinds)], dtype)


def _float_list_values(float_list) -> np.ndarray:
    """A FloatList proto's values as float32, read from its packed wire bytes (field 1: tag 0x0A, a varint
    length, then little-endian float32s), which is bit-exact and avoids a Python float per component."""
    raw = float_list.SerializeToString()
    if raw[:1] == b"\x0a":
        length, shift, i = 0, 0, 1
        while True:
            byte = raw[i]
            length |= (byte & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if byte < 0x80:
                break
        if i + length == len(raw) and length % 4 == 0:
            return np.frombuffer(raw, "<f4", count=length // 4, offset=i)
    return np.array(float_list.val, np.float32)  # any other encoding: the slow, equally exact way


def _timestamp(value) -> pa.Scalar:
    """A request time as a timestamp[us, UTC] scalar; SchemaError for a time without a zone."""
    if isinstance(value, (pd.Timestamp, datetime)):
        if value.tzinfo is None:
            raise SchemaError(REQUEST, "ts", f"{value} has no time zone: a UTC time is required "
                                             "(datetime.now(timezone.utc))")
        return pa.scalar(pd.Timestamp(value).tz_convert("UTC")).cast(TIMESTAMP)
    if isinstance(value, pa.TimestampScalar):
        if value.type.tz is None:
            raise SchemaError(REQUEST, "ts", f"timestamp without a time zone ({value.type})")
        return value.cast(TIMESTAMP)
    raise SchemaError(REQUEST, "ts", f"expected a timezone-aware datetime, got {type(value).__name__}")


def _per_candidate(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple, np.ndarray, pa.Array, pd.Series)):
        values = list(value.to_pylist() if isinstance(value, pa.Array) else value)
        if len(values) != n:
            raise SchemaError(REQUEST, name, f"{len(values)} values for {n} candidates")
        return values
    return [value] * n


def _id_array(values: list, name: str) -> pa.Array:
    if any(v is None for v in values):
        rows = [i for i, v in enumerate(values) if v is None][:5]
        raise SchemaError(REQUEST, name, f"{sum(v is None for v in values)} null key values (rows {rows})")
    try:
        return pa.array([operator.index(v) for v in values], pa.int64())
    except TypeError:
        raise SchemaError(REQUEST, name, f"expected integer ids, got {values[:3]!r}") from None
