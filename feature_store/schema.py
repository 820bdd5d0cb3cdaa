"""The table contracts of the project: every table's columns, arrow dtypes, keys and value rules, in one place.

Every stage (the simulator, DashCLIP training, the feature store, ranking, evaluation) reads and writes tables
through this module, so a user's own catalog, relevance labels or impression logs are checked exactly like the
simulator's output (DESIGN.md section 3).

Contracts
- `TABLES` declares each table. Key columns identify a row: they must be non-null and unique as a tuple.
  Hidden tables (`hidden=True`) hold the simulator's ground truth; no training path reads them.
- `validate(name, data)` takes a pyarrow Table or a pandas DataFrame and returns a pyarrow Table whose first
  columns are the schema's columns, in schema order, with the canonical dtypes; extra columns follow unchanged.
  Only lossless normalisations are applied: a narrower or wider integer to the declared integer type when every
  value fits, float64 to float32, large/view strings and binaries to the plain types, dictionary strings to
  strings, any timestamp unit to microseconds and any time zone to UTC (same instants), and list / large_list /
  fixed_size_list embeddings of floats to list<float32>. Anything else (a string where an int is expected,
  floats in an integer column, a timestamp without a time zone, ...) raises `SchemaError`.
- Value rules: no nulls in keys or non-nullable columns, no NaN in non-nullable float columns, unique keys,
  allowed value sets, inclusive min/max bounds, non-empty text, PNG signatures for images, and one common
  embedding length (equal to `embedding_dim` when given).
- `read_table(name, path)` reads a parquet file or a folder of parquet files (one folder per table, files
  `part-00000.parquet`, ... read in sorted order) and validates it; `write_table(name, data, folder, part)`
  validates and writes `folder/part-{part:05d}.parquet` atomically and byte-deterministically.
- Arrow fields in `TableSchema.arrow_schema` are all nullable in arrow terms; nullability is a validation rule
  (`Column.nullable`), so tables built with `pa.table(..., schema=arrow_schema)` concatenate freely.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.files import staged_file

TIMESTAMP = pa.timestamp("us", tz="UTC")
EMBEDDING = pa.list_(pa.float32())
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class SchemaError(ValueError):
    """A table does not follow its contract; names the table, the column (if any), the problem and the source."""

    def __init__(self, table: str, column: str | None, problem: str, source: str | os.PathLike | None = None):
        self.table = table
        self.column = column
        self.problem = problem
        self.source = None if source is None else str(source)
        where = f"table '{table}'" + (f" ({self.source})" if self.source else "")
        what = f"column '{column}': " if column else ""
        super().__init__(f"{where}: {what}{problem}")

    def __reduce__(self):  # keeps the error picklable (multiprocessing, Beam workers)
        return (SchemaError, (self.table, self.column, self.problem, self.source))


@dataclass(frozen=True)
class Column:
    """One column: arrow dtype, key flag and the rules its values follow.

    `allowed` is a frozenset of permitted values; `min`/`max` are inclusive bounds; `non_empty` rejects "" / b"";
    `non_blank` rejects text that is empty after stripping whitespace; `magic` is a required leading byte string
    (a file signature, e.g. PNG's).
    """

    name: str
    dtype: pa.DataType
    key: bool = False
    nullable: bool = False
    allowed: frozenset | None = None
    min: float | int | None = None
    max: float | int | None = None
    doc: str = ""
    non_empty: bool = False
    non_blank: bool = False
    magic: bytes | None = None


@dataclass(frozen=True)
class TableSchema:
    """A table: its columns in canonical order. Hidden tables are simulator ground truth."""

    name: str
    columns: tuple[Column, ...]
    hidden: bool = False
    doc: str = ""

    @property
    def keys(self) -> tuple[str, ...]:
        """Names of the key columns, in schema order."""
        return tuple(c.name for c in self.columns if c.key)

    @property
    def names(self) -> tuple[str, ...]:
        """Names of all columns, in schema order."""
        return tuple(c.name for c in self.columns)

    @property
    def arrow_schema(self) -> pa.Schema:
        """The canonical arrow schema (fields in column order)."""
        return pa.schema([pa.field(c.name, c.dtype) for c in self.columns])

    def column(self, name: str) -> Column:
        """The column called `name` (KeyError naming the table's columns if there is none)."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table '{self.name}' has no column '{name}' (columns: {', '.join(self.names)})")


# ---------------------------------------------------------------------------------------------------------------
# The tables (DESIGN.md section 3)

LABELS = frozenset({0, 1, 2})
BINARY = frozenset({0, 1})


def _key(name: str, dtype: pa.DataType = pa.int64(), doc: str = "") -> Column:
    return Column(name, dtype, key=True, doc=doc)


def _table(name: str, *columns: Column, hidden: bool = False, doc: str = "") -> TableSchema:
    return TableSchema(name, tuple(columns), hidden=hidden, doc=doc)


def _embeddings(name: str, key: str, doc: str) -> TableSchema:
    return _table(
        name,
        _key(key),
        Column("embedding", EMBEDDING, doc="L2-normalised embedding; every row has the same length"),
        Column("model_version", pa.string(), doc="the embedding model version that produced the row"),
        Column("event_ts", TIMESTAMP, doc="when the vector became available (point-in-time joins use it)"),
        doc=doc,
    )


# Trailing windows (days) of the historical count features; the training-set contract names them
# <entity>_<impressions|clicks>_<window>d for each entity in COUNT_ENTITIES.
COUNT_WINDOWS_DAYS = (1, 7)
COUNT_ENTITIES = ("product", "query", "ad", "user")


def count_feature_names(entity: str) -> tuple[str, ...]:
    """The count columns of one entity, e.g. product_impressions_1d, product_clicks_1d, product_impressions_7d..."""
    return tuple(f"{entity}_{kind}_{w}d" for w in COUNT_WINDOWS_DAYS for kind in ("impressions", "clicks"))


COUNT_FEATURES = tuple(name for entity in COUNT_ENTITIES for name in count_feature_names(entity))


def _feature_table(name: str, key: str, *columns: Column, doc: str) -> TableSchema:
    """A feature-store table: one row per entity and event time; Feast's point-in-time join serves, for an
    entity row at time t, the row with the latest event_ts <= t."""
    return _table(name, _key(key), _key("event_ts", TIMESTAMP, doc="when the row's values take effect"),
                  *columns, doc=doc)


def _count_table(entity: str) -> TableSchema:
    return _feature_table(
        f"{entity}_count_features", f"{entity}_id",
        *(Column(n, pa.float32(), min=0.0) for n in count_feature_names(entity)),
        doc=f"Impressions and clicks per {entity} over trailing whole UTC days: the row at day D 00:00 counts "
            f"days D-w..D-1 only (strictly before any time on day D); rows only where a value changes.")


# The impression log's ids and labels; the training set carries them unchanged (one row per impression).
IMPRESSION_KEYS = (
    _key("impression_id"),
    Column("request_id", pa.int64()),
    Column("ts", TIMESTAMP),
    Column("user_id", pa.int64()),
    Column("query_id", pa.int64()),
    Column("product_id", pa.int64()),
    Column("ad_id", pa.int64()),
    Column("campaign_id", pa.int64()),
    Column("advertiser_id", pa.int64()),
)
IMPRESSION_LABELS = (
    Column("click", pa.int8(), allowed=BINARY),
    Column("conversion", pa.int8(), allowed=BINARY),
)

TABLES: dict[str, TableSchema] = {
    t.name: t
    for t in [
        _table(
            "products",
            _key("product_id"),
            Column("title", pa.string(), non_empty=True),
            Column("aisle", pa.string()),
            Column("brand", pa.string()),
            Column("store_id", pa.int64()),
            Column("price", pa.float32(), min=0.0),
            Column("image", pa.binary(), non_empty=True, magic=PNG_SIGNATURE, doc="PNG file bytes"),
            Column("created_ts", TIMESTAMP, doc="when the product entered the catalog"),
            doc="The catalog: one row per product.",
        ),
        _table(
            "queries",
            _key("query_id"),
            Column("query_text", pa.string(), non_blank=True),
            doc="Search queries.",
        ),
        _table(
            "relevance",
            _key("query_id"),
            _key("product_id"),
            Column("label", pa.int8(), allowed=LABELS, doc="0 irrelevant, 1 moderately, 2 highly relevant"),
            Column("source", pa.string(), doc="who labelled the pair (e.g. an LLM labeller's name)"),
            doc="Query-product relevance labels (LLM-curated).",
        ),
        _table(
            "impressions",
            *IMPRESSION_KEYS,
            Column("position", pa.int8(), min=1, doc="1 = top slot"),
            Column("device", pa.string()),
            Column("price", pa.float32(), min=0.0),
            Column("discount", pa.float32(), min=0.0, max=1.0, doc="fraction off the price"),
            Column("rating", pa.float32(), min=0.0, max=5.0),
            Column("rating_count", pa.int32(), min=0),
            Column("store_distance_km", pa.float32(), min=0.0),
            *IMPRESSION_LABELS,
            doc="The ad impression log: one row per ad shown.",
        ),
        _table(
            "purchases",
            _key("user_id"),
            _key("product_id"),
            _key("ts", TIMESTAMP),
            Column("quantity", pa.int32(), min=1),
            doc="Purchase history (for the user-history embedding).",
        ),
        _table(
            "impression_truth",
            _key("impression_id"),
            Column("click_prob", pa.float32(), min=0.0, max=1.0),
            Column("true_label", pa.int8(), allowed=LABELS),
            hidden=True,
            doc="Simulator ground truth per impression: the true click probability.",
        ),
        _table(
            "relevance_truth",
            _key("query_id"),
            _key("product_id"),
            Column("true_label", pa.int8(), allowed=LABELS),
            hidden=True,
            doc="Simulator ground truth: the relevance before label noise.",
        ),
        _table(
            "retrieval_truth",
            _key("query_id"),
            _key("product_id"),
            Column("true_label", pa.int8(), allowed=frozenset({1, 2})),
            hidden=True,
            doc="Simulator ground truth for retrieval: every catalog product relevant (1 or 2) to each query of the "
                "relevance set; pairs left out are irrelevant.",
        ),
        _table(
            "product_truth",
            _key("product_id"),
            Column("type_id", pa.int32()),
            Column("type_name", pa.string()),
            Column("aisle_id", pa.int32()),
            Column("ambiguity", pa.string(), allowed=frozenset({"none", "title", "image"})),
            hidden=True,
            doc="Simulator ground truth per product: its type and which modality is ambiguous.",
        ),
        _table(
            "query_truth",
            _key("query_id"),
            Column("intent", pa.string(), allowed=frozenset({"type", "brand_type", "aisle", "broad"})),
            Column("target", pa.string()),
            Column("weight", pa.float64(), min=0.0, doc="query frequency weight"),
            Column("level", pa.int8()),
            hidden=True,
            doc="Simulator ground truth per query: its intent and target.",
        ),
        _embeddings("product_embeddings", "product_id", "Precomputed product embeddings (one model version)."),
        _embeddings("query_embeddings", "query_id", "Precomputed query embeddings (one model version)."),
        # Feature-store tables (feature_store/derive.py writes them; Feast's feature views read them).
        _feature_table(
            "product_embedding_features", "product_id",
            Column("product_embedding", EMBEDDING),
            doc="The versioned DashCLIP product vector from the time it became available."),
        _feature_table(
            "query_embedding_features", "query_id",
            Column("query_embedding", EMBEDDING),
            doc="The versioned DashCLIP query vector from the time it became available."),
        _feature_table(
            "user_history_features", "user_id",
            Column("history_embedding", EMBEDDING, doc="mean product vector of the purchases in the window"),
            Column("history_count", pa.float32(), min=0.0, doc="purchases in the window (with a product vector)"),
            doc="Purchase-history embedding: a row at every instant the set of purchases in the trailing window "
                "changes (a purchase at p counts for times in (p, p + history_days])."),
        _feature_table(
            "product_attribute_features", "product_id",
            Column("aisle", pa.string()),
            Column("brand", pa.string()),
            Column("store_id", pa.int64()),
            Column("price", pa.float32(), min=0.0),
            Column("created_us", pa.int64(), doc="created_ts in microseconds since the epoch (for the age)"),
            doc="Catalog attributes, effective from the product's created_ts."),
        _feature_table(
            "product_rating_features", "product_id",
            Column("rating", pa.float32(), min=0.0, max=5.0),
            Column("rating_count", pa.int32(), min=0),
            doc="The rating last shown in the impression log, effective 1 microsecond after the impression "
                "that first showed it (known strictly before later impressions)."),
        *(_count_table(entity) for entity in COUNT_ENTITIES),
        _table(
            "training_set",
            *IMPRESSION_KEYS,
            Column("store_id", pa.int64(), doc="0 for an unknown product"),
            Column("position", pa.int8(), min=1, doc="1 = top slot"),
            Column("device", pa.string()),
            Column("aisle", pa.string(), doc="'' for an unknown product"),
            Column("brand", pa.string(), doc="'' for an unknown product"),
            Column("price", pa.float32(), min=0.0),
            Column("discount", pa.float32(), min=0.0, max=1.0),
            Column("rating", pa.float32(), min=0.0, max=5.0, doc="0 before the product's first impression"),
            Column("rating_count", pa.int32(), min=0),
            Column("store_distance_km", pa.float32(), min=0.0),
            Column("product_age_days", pa.float32(), min=0.0, doc="(ts - created_ts) in days; 0 if unknown"),
            *(Column(n, pa.float32(), min=0.0) for n in COUNT_FEATURES),
            Column("history_count", pa.float32(), min=0.0),
            Column("product_embedding", EMBEDDING, doc="zeros until the product's vector is available"),
            Column("query_embedding", EMBEDDING, doc="zeros until the query's vector is available"),
            Column("history_embedding", EMBEDDING, doc="zeros when no purchase is in the window"),
            *IMPRESSION_LABELS,
            doc="The pCTR training set: impressions with point-in-time features (python -m feature_store "
                "training-set); unknown entities get the defaults listed in its metadata.json."),
    ]
}


def table_schema(table_name: str, source: str | os.PathLike | None = None) -> TableSchema:
    """The schema of `table_name`; SchemaError listing the known tables if there is none."""
    try:
        return TABLES[table_name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(TABLES))
        raise SchemaError(str(table_name), None, f"unknown table (known tables: {known})", source) from None


# ---------------------------------------------------------------------------------------------------------------
# Validation


def validate(table_name: str, data: Any, source: str | os.PathLike | None = None,
             embedding_dim: int | None = None) -> pa.Table:
    """Check `data` (pyarrow Table or pandas DataFrame) against its contract; return the canonical pa.Table.

    Schema columns come first in schema order with canonical dtypes, extra columns follow unchanged.
    Raises SchemaError naming the table, the column and the problem.
    """
    return _validate(table_schema(table_name, source), data, source, embedding_dim, only=None)


def _validate(schema: TableSchema, data: Any, source, embedding_dim: int | None,
              only: tuple[str, ...] | None) -> pa.Table:
    """validate(); with `only`, check and return just those columns (the keys are always among them)."""
    table = _to_arrow(schema, data, source)
    arrays, names = _conform(schema, table, source, only)
    for name, values in zip(names, arrays):
        if name in schema.names:
            _check_values(schema, schema.column(name), values, source, embedding_dim)
    result = pa.Table.from_arrays(arrays, names=names)  # no schema metadata: deterministic files
    _check_unique_keys(schema, result, source)
    return result


def _to_arrow(schema: TableSchema, data: Any, source) -> pa.Table:
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if not isinstance(data, pa.Table):
        import pandas as pd  # only when a DataFrame is given

        if not isinstance(data, pd.DataFrame):
            raise TypeError(f"table '{schema.name}': expected a pyarrow Table or pandas DataFrame, "
                            f"got {type(data).__name__}")
        try:
            data = pa.Table.from_pandas(data, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise SchemaError(schema.name, None, f"cannot convert the DataFrame to arrow: {err}", source) from None
    seen: set[str] = set()
    for name in data.column_names:
        if name in seen:
            raise SchemaError(schema.name, name, "duplicate column name", source)
        seen.add(name)
    return data


def _conform(schema: TableSchema, table: pa.Table, source, only) -> tuple[list, list[str]]:
    """Schema columns (canonical dtypes, schema order) then extras; errors for missing columns or bad dtypes."""
    wanted = schema.names if only is None else tuple(n for n in schema.names if n in only)
    requested = wanted if only is None else wanted + tuple(n for n in only if n not in schema.names)
    missing = [n for n in requested if n not in table.column_names]
    if missing:
        also = f"; also missing: {', '.join(missing[1:])}" if len(missing) > 1 else ""
        raise SchemaError(schema.name, missing[0],
                          f"missing column{also} (the table has: {', '.join(table.column_names) or 'no columns'})",
                          source)
    arrays = [_conform_dtype(schema, schema.column(n), table.column(n), source) for n in wanted]
    extras = [n for n in (table.column_names if only is None else only)
              if n not in schema.names and n in table.column_names]
    return arrays + [table.column(n) for n in extras], list(wanted) + extras


def _conform_dtype(schema: TableSchema, col: Column, values: pa.ChunkedArray, source) -> pa.ChunkedArray:
    """Cast `values` to `col.dtype` when that is lossless, else raise SchemaError."""
    expected, actual = col.dtype, values.type
    if actual == expected:
        return values

    def fail(extra: str = "") -> SchemaError:
        return SchemaError(schema.name, col.name, f"has dtype {actual}, expected {expected}{extra}", source)

    if pa.types.is_null(actual):  # an all-null column (e.g. all None in pandas): the null checks decide
        return values.cast(expected)
    if pa.types.is_integer(expected):
        if pa.types.is_floating(actual):
            raise fail(" (floats in an integer column; in pandas, nulls turn ints into floats: "
                       "use the nullable 'Int64' dtype)")
        if not pa.types.is_integer(actual):
            raise fail()
        _check_int_range(schema, col, values, source)
        return values.cast(expected)
    if pa.types.is_floating(expected):
        if not pa.types.is_floating(actual):
            raise fail()
        return _cast_float(schema, col, values, source)
    if pa.types.is_string(expected):
        if pa.types.is_large_string(actual) or pa.types.is_string_view(actual) or (
                pa.types.is_dictionary(actual) and _is_text(actual.value_type)):
            return values.cast(expected)
        raise fail()
    if pa.types.is_binary(expected):
        if pa.types.is_large_binary(actual) or pa.types.is_binary_view(actual):
            return values.cast(expected)
        raise fail()
    if pa.types.is_timestamp(expected):
        if not pa.types.is_timestamp(actual):
            raise fail()
        if actual.tz is None:
            raise SchemaError(schema.name, col.name,
                              f"timestamp without a time zone ({actual}): a UTC time zone is required "
                              "(pandas: .dt.tz_localize('UTC'))", source)
        try:  # arrow stores UTC instants, so a time-zone change relabels; the unit change must be exact
            return values.cast(expected)
        except pa.ArrowInvalid:
            raise fail(" (values would lose sub-microsecond precision)") from None
    if pa.types.is_list(expected):  # embeddings
        is_list = (pa.types.is_list(actual) or pa.types.is_large_list(actual)
                   or pa.types.is_fixed_size_list(actual))
        if not (is_list and pa.types.is_floating(actual.value_type)):
            raise fail(" (an embedding is a list of floats)")
        if actual.value_type == pa.float64():
            _cast_float(schema, col, pc.list_flatten(values), source)  # overflow check only
        return values.cast(expected)
    raise fail()


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _int_range(t: pa.DataType) -> tuple[int, int]:
    info = np.iinfo(t.to_pandas_dtype())
    return int(info.min), int(info.max)


def _check_int_range(schema: TableSchema, col: Column, values: pa.ChunkedArray, source) -> None:
    """Error unless every integer fits the declared (possibly narrower) integer type."""
    (src_lo, src_hi), (lo, hi) = _int_range(values.type), _int_range(col.dtype)
    masks = []
    if lo > src_lo:
        masks.append(pc.less(values, pa.scalar(lo, values.type)))
    if hi < src_hi:
        masks.append(pc.greater(values, pa.scalar(hi, values.type)))
    for mask in masks:
        if n := _count(mask):
            raise SchemaError(schema.name, col.name,
                              f"{n} values do not fit {col.dtype} [{lo}, {hi}] (e.g. {_example(values, mask)}); "
                              f"the column has dtype {values.type}", source)


def _cast_float(schema: TableSchema, col: Column, values: pa.ChunkedArray, source) -> pa.ChunkedArray:
    """Cast floats to the declared float type; finite values that overflow to inf are an error."""
    target = col.dtype if pa.types.is_floating(col.dtype) else col.dtype.value_type
    cast = values.cast(target)
    if target.bit_width < values.type.bit_width:
        overflow = pc.and_(pc.is_inf(cast), pc.invert(pc.is_inf(values)))
        if n := _count(overflow):
            raise SchemaError(schema.name, col.name,
                              f"{n} values overflow {target} (e.g. {_example(values, overflow)})", source)
    return cast


def _check_values(schema: TableSchema, col: Column, values: pa.ChunkedArray, source,
                  embedding_dim: int | None) -> None:
    """Value rules of one column whose dtype is already canonical."""

    def fail(problem: str) -> SchemaError:
        return SchemaError(schema.name, col.name, problem, source)

    if values.null_count and (col.key or not col.nullable):
        raise fail(f"{values.null_count} null key values" if col.key else f"{values.null_count} null values")
    if pa.types.is_floating(col.dtype) and not col.nullable:
        if n := _count(pc.is_nan(values)):
            raise fail(f"{n} NaN values")
    if col.allowed is not None:
        value_set = pa.array(sorted(col.allowed), col.dtype)
        outside = pc.invert(pc.is_in(values, value_set=value_set))
        if n := _count(outside):
            shown = "{" + ", ".join(_show(v) for v in value_set.to_pylist()) + "}"
            raise fail(f"{n} values outside {shown} (e.g. {_example(values, outside)})")
    if col.min is not None:
        below = pc.less(values, _scalar(col.min, col.dtype))
        if n := _count(below):
            raise fail(f"{n} values below the minimum {col.min} (e.g. {_example(values, below)})")
    if col.max is not None:
        above = pc.greater(values, _scalar(col.max, col.dtype))
        if n := _count(above):
            raise fail(f"{n} values above the maximum {col.max} (e.g. {_example(values, above)})")
    if col.non_empty or col.non_blank:
        text = pc.utf8_trim_whitespace(values) if col.non_blank else values
        empty = pc.equal(pc.binary_length(text), 0)
        if n := _count(empty):
            raise fail(f"{n} empty values" + (" (after stripping whitespace)" if col.non_blank else ""))
    if col.magic is not None:
        bad = pc.not_equal(pc.binary_slice(values, 0, len(col.magic)), pa.scalar(col.magic, pa.binary()))
        if n := _count(bad):
            raise fail(f"{n} values do not start with the signature {col.magic!r} "
                       f"(e.g. starting {_example(values, bad)})")
    if pa.types.is_list(col.dtype):
        _check_embedding(col, values, embedding_dim, fail)


def _check_embedding(col: Column, values: pa.ChunkedArray, embedding_dim: int | None, fail) -> None:
    """All rows one length (== embedding_dim when given), no null or NaN components."""
    lengths = pc.list_value_length(values)
    if len(values) and lengths.null_count < len(values):
        bounds = pc.min_max(lengths)
        short, long = bounds["min"].as_py(), bounds["max"].as_py()
        if embedding_dim is not None and (short != embedding_dim or long != embedding_dim):
            wrong = pc.not_equal(lengths, embedding_dim)
            raise fail(f"expected embedding_dim {embedding_dim}, got length {_example(lengths, wrong)} "
                       f"in {_count(wrong)} rows")
        if short != long:
            mode = pc.mode(lengths)[0]["mode"].as_py()
            odd = pc.not_equal(lengths, mode)
            raise fail(f"embedding rows have different lengths: {_count(odd)} rows differ from the common "
                       f"length {mode} (e.g. length {_example(lengths, odd)}; lengths range {short}..{long})")
    flat = pc.list_flatten(values)
    if flat.null_count:
        raise fail(f"{flat.null_count} null embedding components")
    if n := _count(pc.is_nan(flat)):
        raise fail(f"{n} NaN embedding components")


def _check_unique_keys(schema: TableSchema, table: pa.Table, source) -> None:
    """Key tuples must be unique; the error gives the number of extra rows and one duplicated key."""
    keys = list(schema.keys)
    if not keys or table.num_rows == 0:
        return
    if len(keys) == 1 and pc.count_distinct(table.column(keys[0])).as_py() == table.num_rows:
        return  # the common case, without a group-by
    counts = table.select(keys).group_by(keys).aggregate([([], "count_all")])
    extra = table.num_rows - counts.num_rows
    if extra == 0:
        return
    dup = counts.filter(pc.greater(counts.column("count_all"), 1)).slice(0, 1).to_pylist()[0]
    example = ", ".join(f"{k}={_show(dup[k])}" for k in keys)
    raise SchemaError(schema.name, ", ".join(keys),
                      f"{extra} duplicate keys (e.g. {example} appears {dup['count_all']} times)", source)


def _count(mask) -> int:
    return pc.sum(mask).as_py() or 0


def _example(values, mask) -> str:
    return _show(values.filter(mask)[0].as_py())


def _show(value) -> str:
    if isinstance(value, bytes):
        return repr(value[:8]) + ("..." if len(value) > 8 else "")
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return str(value)


def _scalar(value, dtype: pa.DataType):
    try:
        return pa.scalar(value, dtype)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return value


# ---------------------------------------------------------------------------------------------------------------
# Reading and writing


def _parquet_files(schema: TableSchema, path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"table '{schema.name}': no parquet file or folder at {path}")
    files = sorted(p for p in path.glob("*.parquet") if p.is_file() and not p.name.startswith((".", "_")))
    if not files:
        raise FileNotFoundError(f"table '{schema.name}': no parquet files in folder {path}")
    return files


def read_table(table_name: str, path: str | os.PathLike, columns: Iterable[str] | None = None,
               embedding_dim: int | None = None) -> pa.Table:
    """Read and validate a table from a parquet file or a folder of parquet files (sorted file order).

    With `columns`, only those (plus the key columns) are read and checked; a requested column that is
    missing is still an error.
    """
    path = Path(path)
    schema = table_schema(table_name, path)
    only = None
    if columns is not None:
        columns = list(columns)
        only = tuple(dict.fromkeys([k for k in schema.keys if k not in columns] + columns))
    parts = []
    for file in _parquet_files(schema, path):
        f = pq.ParquetFile(file)
        present = f.schema_arrow.names
        part = f.read(columns=None if only is None else [c for c in only if c in present])
        arrays, names = _conform(schema, part, file, only)  # per part, so parts may differ in harmless dtypes
        parts.append(pa.Table.from_arrays(arrays, names=names))
    try:
        table = pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise SchemaError(schema.name, None, f"parts do not concatenate: {err}", path) from None
    return _validate(schema, table, path, embedding_dim, only)


def write_table(table_name: str, data: Any, folder: str | os.PathLike, part: int = 0,
                embedding_dim: int | None = None) -> Path:
    """Validate `data` and write it atomically to `folder/part-{part:05d}.parquet` (zstd); returns the path.

    The same input gives the same bytes (no schema metadata, no write time in the file).
    """
    folder = Path(folder)
    table = validate(table_name, data, source=folder, embedding_dim=embedding_dim)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"part-{part:05d}.parquet"
    with staged_file(target) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return target


# ---------------------------------------------------------------------------------------------------------------
# Embedding columns as matrices


def embedding_matrix(column, dim: int | None = None) -> np.ndarray:
    """list<float32> column without nulls -> [N, D] float32 (rows validated to one length)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(column)
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(n, -1) if n else np.zeros((0, dim or 0), np.float32)


def checked_embedding_matrix(column, name: str, dim: int, where: str = "",
                             error: type[Exception] = ValueError) -> np.ndarray:
    """A list<float> or fixed-size-list column from a user's file -> float32 [N, dim]; `error`, prefixed with
    `where` and naming the column, for null rows, rows of another width or NaN components."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if column.null_count:
        raise error(f"{where}embedding column '{name}' has {column.null_count} null rows (unknown embeddings must "
                    f"be zero vectors)")
    if pa.types.is_fixed_size_list(column.type):
        column = column.cast(pa.list_(column.type.value_type))
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(lengths != dim)
    if len(wrong):
        raise error(f"{where}embedding column '{name}' should have width {dim} but {len(wrong)} of {len(column)} "
                    f"rows have another width (e.g. {int(lengths[wrong[0]])}, row {int(wrong[0])})")
    values = embedding_matrix(column, dim)
    if np.isnan(values).any():
        raise error(f"{where}embedding column '{name}' has NaN components")
    return values
