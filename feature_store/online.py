"""Online features for serving: one request (a user, a query, N candidate products) -> every model feature.

    online = OnlineFeatures("data/demo", "v1")        # after build and materialize
    feats = online.get(user_id=7, query_id=42, product_ids=[...], ad_ids=[...],
                       context={"ts": now, "device": "app", "position": [1, 2, ...], "discount": [...],
                                "store_distance_km": [...]})
    feats["product_embedding"]  # float32 [N, D]; feats["price"]  # float32 [N]; ...

Each distinct entity of the request (one user, one query, the distinct products and ads) is read once, in one
round trip where the store allows it, straight from the layout Feast materialized (the serialized Feast values that
Feast's own online_read would parse), and decoded once per feature: Feast's `get_online_features` spends ~20-40 ms
of Python per request of 100-200 candidates on work a ranker does not need (response protos, per-row timestamps).
The reader follows the rendered repo's online store (FeatureStoreConfig.online_store):

    sqlite  one SELECT per feature view on the file Feast writes (rows: entity_key, feature_name, value)
    redis   one server-side script of HMGETs, one round trip: a hash per entity key + project, a field per
            mmh3("<view>:<feature>") (Feast's Redis format, docs/specs/online_store_format.md in the Feast repo)
    other   Feast's OnlineStore.online_read per view (any store Feast supports: slower, same values)

Values are assembled by the same function as the training sets (feature_store.features.assemble) with the same
defaults for unknown entities, so the online features of a request equal its training-set features (bit for bit)
when the online store was materialized up to the request time. Request-time fields (ts, position, device,
discount, store_distance_km) come from the caller: each a scalar for the whole request or one value per candidate.
"""

from __future__ import annotations

import operator
import os
import sqlite3
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from feature_store.config import FeatureStoreConfig
from feature_store.features import (
    CONTEXT, EMBEDDINGS, ENTITY_KEYS, ONLINE_COLUMNS, STORE_FEATURES, STORE_TABLES, STORE_TYPES, assemble,
)
from feature_store.schema import TIMESTAMP, SchemaError, embedding_array
from feature_store.store import FeatureRepo, check_entity_rows

REQUEST = "online request"
FLOAT_HEADER = b"\x35"  # a Feast Value's float_val: field 6, wire type 5 (fixed32), then the float32


class OnlineFeatures:
    """Reads one request's features from the online store of a data directory and embedding version."""

    def __init__(self, data_dir: str | Path, embedding_version: str, config: FeatureStoreConfig | None = None):
        self.repo = FeatureRepo(data_dir, embedding_version, config or FeatureStoreConfig(progress=False))
        self.embedding_dim = self.repo.embedding_dim()
        self.feature_refs = self.repo.feature_refs()
        self.store = self.repo.store
        self.values = store_values(self.store, self.repo.views)
        from feast.protos.feast.types.Value_pb2 import Value  # Feast is loaded by now (self.store)

        self._parse = Value.FromString
        dim = self.embedding_dim  # a float_list_val of D floats: these bytes, then the floats
        self._vector_header = Value(float_list_val={"val": [0.0] * dim}).SerializeToString()[:-4 * dim]
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
        if n:  # each distinct entity read once, then spread over the candidates
            distinct, spread = {}, {}
            for key in ENTITY_KEYS:
                distinct[key], spread[key] = np.unique(rows.column(key).to_numpy(), return_inverse=True)
            raw = self.values.read({key: ids.tolist() for key, ids in distinct.items()})
            store = {f: self._store_column(f, raw[f], spread[self.values.join_key[f]]) for f in STORE_FEATURES}
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

    def _store_column(self, name: str, blobs: list, spread: np.ndarray) -> pa.Array:
        """Serialized Feast values of the distinct entities (None: no row) -> the candidates' arrow column
        (entity spread[i] for candidate i), null where the store has nothing. A value with no field set
        serializes to b"", so an empty blob is a null too. float32 values and vectors are decoded from their
        wire bytes in one numpy pass (bit for bit); anything else through the protos."""
        dtype = self._types[name]
        found = list(filter(None, blobs))  # C speed; the usual case is every entity known
        present = np.ones(len(blobs), bool) if len(found) == len(blobs) else np.array([bool(b) for b in blobs])
        if name in EMBEDDINGS:
            out = np.zeros((len(blobs), self.embedding_dim), np.float32)
            if found:
                out[present] = self._vectors(name, found)
            return embedding_array(out[spread], null_rows=~present[spread])
        if not found:
            return pa.nulls(len(spread), dtype)
        packed = _packed(found, FLOAT_HEADER, 1) if dtype == pa.float32() else None
        if packed is not None:
            values = np.zeros(len(blobs), np.float32)
            values[present] = packed[:, 0]
            return pa.array(values[spread], dtype, mask=~present[spread])
        parsed = [self._parse(b) for b in found]
        field = parsed[0].WhichOneof("val")  # one Feast type per feature: the same field in every value
        it = iter(parsed)
        return pa.array([getattr(next(it), field) if p else None for p in present], dtype).take(spread)

    def _vectors(self, name: str, found: list[bytes]) -> np.ndarray:
        """[len(found), D] float32 from serialized Feast float-list values; SchemaError if a length is not D."""
        dim = self.embedding_dim
        packed = _packed(found, self._vector_header, dim)
        if packed is not None:
            return packed
        vectors = [_float_list_values(self._parse(b).float_list_val) for b in found]  # another encoding
        for vector in vectors:
            if len(vector) != dim:
                raise SchemaError(REQUEST, name, f"online store holds a vector of length {len(vector)}, "
                                                 f"the registered embedding_dim is {dim}: materialize again")
        return np.stack(vectors)


def _packed(blobs: list[bytes], header: bytes, count: int) -> np.ndarray | None:
    """[len(blobs), count] float32 from values that are each `header` + `count` little-endian float32s (what
    Feast's Value proto serializes for a float_val, or a float_list_val of `count` floats), read in one numpy
    pass; None if any blob has another layout (another length or type: the caller parses the protos)."""
    width = len(header) + 4 * count
    if set(map(len, blobs)) != {width}:
        return None
    rows = np.frombuffer(b"".join(blobs), np.uint8).reshape(len(blobs), width)
    if not (rows[:, :len(header)] == np.frombuffer(header, np.uint8)).all():
        return None
    return np.ascontiguousarray(rows[:, len(header):]).view("<f4").astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------------------------
# Readers of the serialized Feast values: read({join key: distinct ids}) -> {feature: [bytes or None per id]}


class FeastValues:
    """Any online store, through Feast's OnlineStore.online_read, one call per feature view (the reference the
    direct readers below are tested against)."""

    def __init__(self, store, views: dict[str, str]):
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        self.config = store.config
        self.views = [(store.get_feature_view(views[t]), STORE_TABLES[t]) for t in STORE_TABLES]
        self.join_key = {f: fv.join_keys[0] for fv, features in self.views for f in features}
        self._provider = store._get_provider()
        self._key = lambda key, i: EntityKey(join_keys=[key], entity_values=[Value(int64_val=i)])

    def read(self, ids: dict[str, list[int]]) -> dict[str, list]:
        out = {}
        for fv, features in self.views:
            keys = [self._key(fv.join_keys[0], i) for i in ids[fv.join_keys[0]]]
            rows = self._provider.online_read(self.config, fv, keys, list(features))
            for f in features:
                out[f] = [None if values is None or f not in values else values[f].SerializeToString()
                          for _, values in rows]
        return out


class SqliteValues(FeastValues):
    """Feast's SQLite store: one SELECT per view over the rows Feast writes (entity_key, feature_name, value)."""

    def __init__(self, store, views: dict[str, str]):
        super().__init__(store, views)
        from feast.infra.online_stores.helpers import compute_table_id

        path = Path(self.config.online_store.path)
        if not path.is_absolute():
            path = Path(self.config.repo_path) / path
        if not path.exists():
            raise FileNotFoundError(f"no online store at {path}: run `python -m feature_store materialize` first")
        self._path = path.resolve()
        self._open()
        versioned = self.config.registry.enable_online_feature_view_versioning
        self._tables = [(compute_table_id(self.config.project, fv, versioned).replace('"', '""'), fv.join_keys[0],
                         features) for fv, features in self.views]
        self._entity_key = _entity_key_bytes(self.config.entity_key_serialization_version, b"")

    def _open(self) -> None:
        self._file = _identity(self._path)
        self._db = sqlite3.connect(f"{self._path.as_uri()}?mode=ro", uri=True, check_same_thread=False)

    def read(self, ids: dict[str, list[int]]) -> dict[str, list]:
        if _identity(self._path) != self._file:  # materialize renamed a new online.db into place: read that one
            self._db.close()
            self._open()
        out = {}
        for table, key, features in self._tables:
            keys = [self._entity_key(key, i) for i in ids[key]]
            found = {(k, f): v for k, f, v in self._db.execute(
                f'SELECT entity_key, feature_name, value FROM "{table}" WHERE entity_key IN '
                f'({",".join("?" * len(keys))})', keys)}
            for f in features:
                out[f] = [found.get((k, f)) for k in keys]
        return out


def _identity(path: Path) -> tuple[int, int]:
    """(device, inode) of a file: a new online.db renamed into place has another inode (one stat per request)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


class RedisValues(FeastValues):
    """Feast's Redis store: every feature of every view keyed by an entity sits in one hash per entity (Feast's
    format), so one HMGET per distinct entity reads it all, and one server-side script (READ_SCRIPT) runs them
    all in a single command: one round trip and one reply, which costs far less Python than a pipeline of
    HMGETs. For a standalone Redis (or Sentinel's master); a Redis Cluster spreads keys over shards that one
    script may not span, so store_values gives it Feast's online_read."""

    def __init__(self, store, views: dict[str, str]):
        super().__init__(store, views)
        from feast.infra.online_stores.helpers import _mmh3, compute_versioned_name

        versioned = self.config.registry.enable_online_feature_view_versioning
        self._fields: dict[str, tuple[list[bytes], list[str]]] = {}  # join key -> (hash fields, features)
        for fv, features in self.views:
            fields, names = self._fields.setdefault(fv.join_keys[0], ([], []))
            name = compute_versioned_name(fv, versioned)
            fields.extend(_mmh3(f"{name}:{f}") for f in features)
            names.extend(features)
        client = self._provider.online_store._get_client(self.config.online_store)
        self._script = client.register_script(READ_SCRIPT)  # EVALSHA, loading the script where it is missing
        self._entity_key = _entity_key_bytes(self.config.entity_key_serialization_version,
                                             self.config.project.encode())

    def read(self, ids: dict[str, list[int]]) -> dict[str, list]:
        keys, args = [], []
        for key, (fields, _) in self._fields.items():
            keys.extend(self._entity_key(key, i) for i in ids[key])
            args.extend([len(ids[key]), len(fields), *fields])
        replies = self._script(keys=keys, args=args) if keys else []
        out, start = {}, 0
        for key, (_, names) in self._fields.items():
            group = replies[start:start + len(ids[key])]
            start += len(ids[key])
            columns = zip(*group) if group else [()] * len(names)  # per entity -> per feature
            out.update((f, list(values)) for f, values in zip(names, columns))
        return out


# HMGET of groups of keys, each group with its own fields: ARGV = (number of keys, number of fields, fields...)
# per group, KEYS = all keys in group order. Returns one HMGET reply per key (absent values as nil).
READ_SCRIPT = """
local out, k, a = {}, 1, 1
while a <= #ARGV do
  local nkeys, nfields = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local fields = {unpack(ARGV, a + 2, a + 1 + nfields)}
  for _ = 1, nkeys do
    out[k] = redis.call('HMGET', KEYS[k], unpack(fields))
    k = k + 1
  end
  a = a + 2 + nfields
end
return out
"""


READERS = {"sqlite": SqliteValues, "redis": RedisValues}


def store_values(store, views: dict[str, str]) -> FeastValues:
    """The reader for the repo's online store (Feast's generic path for a type without a direct one, and for a
    Redis Cluster)."""
    online = store.config.online_store
    if online.type == "redis" and getattr(online, "redis_type", "redis") == "redis_cluster":
        return FeastValues(store, views)
    return READERS.get(online.type, FeastValues)(store, views)


def _entity_key_bytes(version: int, suffix: bytes):
    """id -> Feast's serialized entity key (+ suffix: the project, for Redis), cached: catalogs repeat."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    @lru_cache(maxsize=1 << 18)
    def key_bytes(join_key: str, i: int) -> bytes:
        entity = EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=i)])
        return serialize_entity_key(entity, entity_key_serialization_version=version) + suffix

    return key_bytes


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
