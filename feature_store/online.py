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
    redis   one HMGET per distinct entity, pipelined in one write, one round trip: a hash per entity key +
            project, a field per mmh3("<view>:<feature>") (Feast's Redis format,
            docs/specs/online_store_format.md in the Feast repo)
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
from feature_store.store import FeatureRepo

REQUEST = "online request"
FLOAT_HEADER = b"\x35"  # a Feast Value's float_val: field 6, wire type 5 (fixed32), then the float32
# A Feast Value's tag byte for the varint and string fields: int32_val (field 3), int64_val (4), string_val (2).
WIRE_TAGS = {pa.int32(): 0x18, pa.int64(): 0x20, pa.string(): 0x12}


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
        self._float_groups: dict[str, list[str]] = {}  # join key -> its float32 (not embedding) features
        for f in STORE_FEATURES:
            if STORE_TYPES[f] == pa.float32():
                self._float_groups.setdefault(self.values.join_key[f], []).append(f)
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
        ids = {"user_id": _id_array([user_id], "user_id"), "query_id": _id_array([query_id], "query_id"),
               "product_id": _id_array(product_ids, "product_id"),
               "ad_id": _id_array(_per_candidate(ad_ids, n, "ad_id"), "ad_id")}
        if n:  # each distinct entity read once, then spread over the candidates
            distinct, spread = {}, {}
            for key in ENTITY_KEYS:  # user and query: one id for every candidate
                ids_of = ids[key].to_numpy()
                distinct[key], spread[key] = ((ids_of, np.zeros(n, np.intp)) if len(ids_of) == 1
                                              else np.unique(ids_of, return_inverse=True))
            raw = self.values.read({key: values.tolist() for key, values in distinct.items()})
            store = self._float_columns(raw, spread)
            for f in STORE_FEATURES:
                if f not in store:
                    store[f] = self._store_column(f, raw[f], spread[self.values.join_key[f]])
        else:  # no candidates: empty columns, no store call
            store = {f: pa.nulls(0, self._types[f]) for f in STORE_FEATURES}
        request = {"ts": pa.array(np.full(n, ts.value, np.int64)).cast(TIMESTAMP)}
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

    def _float_columns(self, raw: dict[str, list], spread: dict[str, np.ndarray]) -> dict[str, pa.Array]:
        """The float32 features of each join key decoded together, one numpy pass for all of them (most of a
        request's features: the counts), where every entity has every one; {} for a group with a gap (those
        go through _store_column one by one)."""
        out = {}
        for key, names in self._float_groups.items():
            blobs = [b for f in names for b in raw[f]]
            packed = _packed(blobs, FLOAT_HEADER, 1) if all(blobs) else None
            if packed is not None:
                for f, values in zip(names, packed[:, 0].reshape(len(names), -1)):
                    out[f] = pa.array(values[spread[key]])
        return out

    def _store_column(self, name: str, blobs: list, spread: np.ndarray) -> pa.Array:
        """Serialized Feast values of the distinct entities (None: no row) -> the candidates' arrow column
        (entity spread[i] for candidate i) in the feature's dtype, null where the store has nothing. A value
        with no field set serializes to b"", so an empty blob is a null too. The values of all entities are
        decoded at once from their wire bytes with numpy (float32 values and vectors, varint ints, short
        strings; bit for bit); any other layout through the protos."""
        dtype = self._types[name]
        found = list(filter(None, blobs))  # C speed; the usual case is every entity known
        if len(found) == len(blobs):
            present, rows = None, spread
        else:  # rows[i]: candidate i's value among `found`, -1 (null) for an entity without one
            present = np.fromiter(map(bool, blobs), bool, len(blobs))
            lookup = np.full(len(blobs), -1, np.intp)
            lookup[present] = np.arange(len(found))
            rows = lookup[spread]
        if name in EMBEDDINGS:
            vectors = self._vectors(name, found) if found else np.zeros((0, self.embedding_dim), np.float32)
            if present is None:
                return embedding_array(vectors[spread])
            out = np.zeros((len(spread), self.embedding_dim), np.float32)
            out[rows >= 0] = vectors[rows[rows >= 0]]
            return embedding_array(out, null_rows=rows < 0)
        if not found:
            return pa.nulls(len(spread), dtype)
        values = self._decoded(dtype, found)
        if isinstance(values, pa.Array):  # strings, or values parsed through the protos
            return values.take(rows if present is None else pa.array(rows, mask=rows < 0))
        if present is None:
            return pa.array(values[spread])
        return pa.array(values[np.maximum(rows, 0)], mask=rows < 0)

    def _decoded(self, dtype: pa.DataType, found: list[bytes]) -> np.ndarray | pa.Array:
        """The values of serialized Feast values (no empty ones) in `dtype`: numpy for numbers, else arrow."""
        if dtype == pa.float32():
            packed = _packed(found, FLOAT_HEADER, 1)
            if packed is not None:
                return packed[:, 0]
        elif dtype == pa.string():
            strings = _strings(found, WIRE_TAGS[dtype])
            if strings is not None:
                return strings
        elif dtype in WIRE_TAGS:
            values = _varints(found, WIRE_TAGS[dtype])
            if values is not None:
                return values.astype(dtype.to_pandas_dtype())
        parsed = [self._parse(b) for b in found]
        field = parsed[0].WhichOneof("val")  # one Feast type per feature: the same field in every value
        return pa.array([getattr(p, field) for p in parsed], dtype)

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


def _starts(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the blobs joined as uint8, each blob's offset in it, each blob's length)."""
    lengths = np.fromiter(map(len, blobs), np.intp, len(blobs))
    starts = np.zeros(len(blobs), np.intp)
    np.cumsum(lengths[:-1], out=starts[1:])
    return np.frombuffer(b"".join(blobs), np.uint8), starts, lengths


def _varints(blobs: list[bytes], tag: int) -> np.ndarray | None:
    """int64 [len(blobs)] from values that are each the byte `tag` + one varint (a Feast Value's int32_val or
    int64_val: negative numbers take 10 bytes, two's complement over 64 bits, as protobuf writes them), all
    decoded in numpy; None if any blob has another layout (the caller parses the protos)."""
    data, starts, lengths = _starts(blobs)
    if lengths.min() < 2 or lengths.max() > 11 or not (data[starts] == tag).all():
        return None
    width = int(lengths.max()) - 1
    k = np.arange(width)
    inside = k < (lengths - 1)[:, None]  # [n, width]: the varint's bytes; padding after the short ones
    body = np.where(inside, data[np.minimum(starts[:, None] + 1 + k, len(data) - 1)], 0).astype(np.uint64)
    if not ((body >= 0x80) == (k < (lengths - 2)[:, None])).all():  # the high bit: set on all but the last byte
        return None
    parts = (body & 0x7F) << (7 * k).astype(np.uint64)  # the 10th byte's bit 63 is the sign
    return np.bitwise_or.reduce(parts, axis=1).view(np.int64)


def _strings(blobs: list[bytes], tag: int) -> pa.Array | None:
    """A string array from values that are each the byte `tag`, a one-byte length (< 128) and that many UTF-8
    bytes (a Feast Value's string_val up to 127 bytes), the headers cut out in numpy; None for any other layout
    (a longer string, another type). Invalid UTF-8 raises, as the proto parser does."""
    data, starts, lengths = _starts(blobs)
    if lengths.min() < 2 or lengths.max() > 129 or not (data[starts] == tag).all() \
            or not (data[starts + 1] == lengths - 2).all():
        return None
    keep = np.ones(len(data), bool)
    keep[starts] = keep[starts + 1] = False
    offsets = np.zeros(len(blobs) + 1, np.int32)
    np.cumsum(lengths - 2, out=offsets[1:])
    out = pa.StringArray.from_buffers(len(blobs), pa.py_buffer(offsets), pa.py_buffer(data[keep].tobytes()))
    out.validate(full=True)
    return out


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
    format), so one HMGET per distinct entity reads it all. The HMGETs go out pipelined in one write of
    ready-made protocol bytes (each entity's command head cached, the field list shared per join key) and their
    replies are read off the same connection: one round trip, no per-command Python of redis-py's Pipeline, and
    ~2.5x less server time than running the same HMGETs in a Lua script (whose replies Redis converts to Lua
    and back). For a standalone Redis (or Sentinel's master); a Redis Cluster spreads keys over shards that one
    connection does not reach, so store_values gives it Feast's online_read."""

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
        self._tails = {key: b"".join(map(_bulk, fields)) for key, (fields, _) in self._fields.items()}
        self._pool = self._provider.online_store._get_client(self.config.online_store).connection_pool
        entity_key = _entity_key_bytes(self.config.entity_key_serialization_version, self.config.project.encode())
        counts = {key: len(fields) for key, (fields, _) in self._fields.items()}

        @lru_cache(maxsize=1 << 18)
        def head(join_key: str, i: int) -> bytes:
            """`HMGET <entity key>` in the Redis protocol, before the fields: an array of 2 + fields strings."""
            return b"*%d\r\n$5\r\nHMGET\r\n" % (2 + counts[join_key]) + _bulk(entity_key(join_key, i))

        self._head = head

    def read(self, ids: dict[str, list[int]]) -> dict[str, list]:
        parts = []
        for key, tail in self._tails.items():
            for i in ids[key]:
                parts += (self._head(key, i), tail)
        replies = self._pipelined(b"".join(parts), len(parts) // 2) if parts else []
        out, start = {}, 0
        for key, (_, names) in self._fields.items():
            group = replies[start:start + len(ids[key])]
            start += len(ids[key])
            columns = zip(*group) if group else [()] * len(names)  # per entity -> per feature
            out.update((f, list(values)) for f, values in zip(names, columns))
        return out

    def _pipelined(self, commands: bytes, count: int) -> list:
        """Send `count` commands written out in `commands` at once, then read their `count` replies."""
        conn = self._pool.get_connection()
        try:
            conn.send_packed_command([commands])
            return [conn.read_response() for _ in range(count)]
        except BaseException:
            conn.disconnect()  # replies left unread must never reach the connection's next user
            raise
        finally:
            self._pool.release(conn)


def _bulk(value: bytes) -> bytes:
    """A Redis protocol bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


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
