"""Validation of a table against its declaration in `tables.TABLES`, and the error that names what is wrong.

- `validate(name, data)` takes a pyarrow Table or a pandas DataFrame and returns a pyarrow Table whose first
  columns are the schema's columns, in schema order, with the canonical dtypes; extra columns follow unchanged.
  Optional columns (`Column.optional`) may be absent: the result then lacks them too. A column asked for by name
  (`read_table(..., columns=[...])`) must be there, optional or not.
  Only these normalisations are applied: a narrower or wider integer to the declared integer type when every
  value fits, float64 to float32 (rounded to the nearest float32: the one lossy step, documented; a finite value
  beyond float32's range is an error), large/view strings and binaries to the plain types, dictionary strings to
  strings, any timestamp unit to microseconds and any time zone to UTC (same instants), and list / large_list /
  fixed_size_list embeddings of floats to list<float32>. Anything else (a string where an int is expected,
  floats in an integer column, a timestamp without a time zone, ...) raises `SchemaError`.
- Value rules: valid UTF-8 in text columns, no nulls in keys or non-nullable columns, no NaN in non-nullable
  float columns, no +/-inf in any float column or embedding (every declared float is a price, rate, rating,
  count, weight or vector component: none is ever infinite, and one inf turns a model's standardisation and
  gradients into NaN), timestamps within 1677-09-21 .. 2262-04-11 (what pandas and Feast hold), unique keys,
  allowed value sets, inclusive min/max bounds, non-empty text, PNG signatures for images, and one common
  embedding length (equal to `embedding_dim` when given).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.schema.tables import TABLES, Column, TableSchema


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
        return (type(self), (self.table, self.column, self.problem, self.source))


def table_schema(table_name: str, source: str | os.PathLike | None = None) -> TableSchema:
    """The schema of `table_name`; SchemaError listing the known tables if there is none."""
    try:
        return TABLES[table_name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(TABLES))
        raise SchemaError(str(table_name), None, f"unknown table (known tables: {known})", source) from None


def validate(table_name: str, data: Any, source: str | os.PathLike | None = None,
             embedding_dim: int | None = None) -> pa.Table:
    """Check `data` (pyarrow Table or pandas DataFrame) against its contract; return the canonical pa.Table.

    Schema columns come first in schema order with canonical dtypes, extra columns follow unchanged.
    Raises SchemaError naming the table, the column and the problem.
    """
    return validate_against(table_schema(table_name, source), data, source, embedding_dim, only=None)


def validate_against(schema: TableSchema, data: Any, source, embedding_dim: int | None,
                     only: tuple[str, ...] | None) -> pa.Table:
    """validate() with the schema given; with `only`, check and return just those columns (the keys are always
    among them)."""
    table = _to_arrow(schema, data, source)
    arrays, names = conform_columns(schema, table, source, only)
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
        pandas = sys.modules.get("pandas")  # a DataFrame implies pandas is loaded; this package never imports it
        if pandas is None or not isinstance(data, pandas.DataFrame):
            raise TypeError(f"table '{schema.name}': expected a pyarrow Table or pandas DataFrame, "
                            f"got {type(data).__name__}")
        data = _from_pandas(schema, data, source)
    seen: set[str] = set()
    for name in data.column_names:
        if name in seen:
            raise SchemaError(schema.name, name, "duplicate column name", source)
        seen.add(name)
    return data


_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError,
                 ValueError)


def _from_pandas(schema: TableSchema, frame, source) -> pa.Table:
    """A DataFrame as arrow; a column arrow cannot hold (mixed types, ints beyond 64 bits, Python objects) is a
    SchemaError naming it."""
    names = [str(c) for c in frame.columns]
    if dup := next((n for i, n in enumerate(names) if n in names[:i]), None):
        raise SchemaError(schema.name, dup, "duplicate column name", source)
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except _ARROW_ERRORS as err:
        for i, name in enumerate(names):  # find the column: the whole frame's error may not name it
            try:
                pa.Table.from_pandas(frame.iloc[:, [i]], preserve_index=False)
            except _ARROW_ERRORS as col_err:
                problem = col_err.args[0] if isinstance(col_err, pa.ArrowException) and col_err.args else col_err
                raise SchemaError(schema.name, name, f"cannot convert to arrow (dtype {frame.dtypes.iloc[i]}): "
                                  f"{problem}", source) from None
        raise SchemaError(schema.name, None, f"cannot convert the DataFrame to arrow: {err}", source) from None


def conform_columns(schema: TableSchema, table: pa.Table, source, only) -> tuple[list, list[str]]:
    """Schema columns (canonical dtypes, schema order) then extras; errors for missing columns or bad dtypes."""
    has = ", ".join(table.column_names) or "no columns"
    if only is None:  # the whole table: every required column; optional ones where the table has them
        wanted = tuple(n for n in schema.names if n in table.column_names or not schema.column(n).optional)
        requested = wanted
        if schema.one_of and not any(n in table.column_names for n in schema.one_of):
            raise SchemaError(schema.name, schema.one_of[0],
                              f"missing column: a {schema.name} table needs at least one of "
                              f"{', '.join(schema.one_of)} (the table has: {has})", source)
    else:  # asked for by name: required, optional or not
        wanted = tuple(n for n in schema.names if n in only)
        requested = wanted + tuple(n for n in only if n not in schema.names)
    missing = [n for n in requested if n not in table.column_names]
    if missing:
        raise missing_columns(schema, missing, table.column_names, source)
    arrays = [_conform_dtype(schema, schema.column(n), table.column(n), source) for n in wanted]
    extras = [n for n in (table.column_names if only is None else only)
              if n not in schema.names and n in table.column_names]
    return arrays + [table.column(n) for n in extras], list(wanted) + extras


def missing_columns(schema: TableSchema, missing: list[str], has: list[str], source) -> SchemaError:
    """The error for columns a table lacks: names the first, lists the others and what the table has."""
    also = f"; also missing: {', '.join(missing[1:])}" if len(missing) > 1 else ""
    needed = missing[0] in schema.names and schema.column(missing[0]).optional
    optional = " (optional in the contract, but this reader needs it)" if needed else ""
    return SchemaError(schema.name, missing[0],
                       f"missing column{also}{optional} (the table has: {', '.join(has) or 'no columns'})", source)


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
        except pa.ArrowInvalid as err:
            if "out of bounds" in str(err):
                raise SchemaError(schema.name, col.name, f"timestamps out of range ({actual} values beyond what "
                                  f"microseconds since 1970 can hold: {_TS_RANGE})", source) from None
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
        if n := _count_true(mask):
            raise SchemaError(schema.name, col.name,
                              f"{n} values do not fit {col.dtype} [{lo}, {hi}] "
                              f"(e.g. {_first_example(values, mask)}); the column has dtype {values.type}", source)


def _cast_float(schema: TableSchema, col: Column, values: pa.ChunkedArray, source) -> pa.ChunkedArray:
    """Cast floats to the declared float type; finite values that overflow to inf are an error."""
    target = col.dtype if pa.types.is_floating(col.dtype) else col.dtype.value_type
    cast = values.cast(target)
    if target.bit_width < values.type.bit_width:
        overflow = pc.and_(pc.is_inf(cast), pc.invert(pc.is_inf(values)))
        if n := _count_true(overflow):
            raise SchemaError(schema.name, col.name,
                              f"{n} values overflow {target} (e.g. {_first_example(values, overflow)})", source)
    return cast


def _check_values(schema: TableSchema, col: Column, values: pa.ChunkedArray, source,
                  embedding_dim: int | None) -> None:
    """Value rules of one column whose dtype is already canonical."""

    def fail(problem: str) -> SchemaError:
        return SchemaError(schema.name, col.name, problem, source)

    if pa.types.is_string(col.dtype):
        _check_utf8(values, fail)
    if values.null_count and (col.key or not col.nullable):
        raise fail(f"{values.null_count} null key values" if col.key else f"{values.null_count} null values")
    if pa.types.is_floating(col.dtype):
        if not col.nullable and (n := _count_true(pc.is_nan(values))):
            raise fail(f"{n} NaN values")
        if n := _count_true(pc.is_inf(values)):  # no declared float is ever infinite (module docstring)
            raise fail(f"{n} infinite values (e.g. {_first_example(values, pc.is_inf(values))})")
    if pa.types.is_timestamp(col.dtype):
        _check_time_range(values, fail)
    if col.allowed is not None:
        value_set = pa.array(sorted(col.allowed), col.dtype)
        outside = pc.invert(pc.is_in(values, value_set=value_set))
        if n := _count_true(outside):
            shown = "{" + ", ".join(_display(v) for v in value_set.to_pylist()) + "}"
            raise fail(f"{n} values outside {shown} (e.g. {_first_example(values, outside)})")
    if col.min is not None:
        below = pc.less(values, _bound_scalar(col.min, col.dtype))
        if n := _count_true(below):
            raise fail(f"{n} values below the minimum {col.min} (e.g. {_first_example(values, below)})")
    if col.max is not None:
        above = pc.greater(values, _bound_scalar(col.max, col.dtype))
        if n := _count_true(above):
            raise fail(f"{n} values above the maximum {col.max} (e.g. {_first_example(values, above)})")
    if col.non_empty or col.non_blank:
        text = pc.utf8_trim_whitespace(values) if col.non_blank else values
        empty = pc.equal(pc.binary_length(text), 0)
        if n := _count_true(empty):
            raise fail(f"{n} empty values" + (" (after stripping whitespace)" if col.non_blank else ""))
    if col.magic is not None:
        bad = pc.not_equal(pc.binary_slice(values, 0, len(col.magic)), pa.scalar(col.magic, pa.binary()))
        if n := _count_true(bad):
            raise fail(f"{n} values do not start with the signature {col.magic!r} "
                       f"(e.g. starting {_first_example(values, bad)})")
    if pa.types.is_list(col.dtype):
        _check_embedding(col, values, embedding_dim, fail)


def _check_utf8(values: pa.ChunkedArray, fail) -> None:
    """Text must be valid UTF-8: a parquet file can hold any bytes in a string column, and the text functions
    (and every decoder after them) fail on them with an error that names no column."""
    try:
        for chunk in values.chunks:
            chunk.validate(full=True)
        return
    except pa.ArrowInvalid:
        pass
    raw = values.cast(pa.binary()).to_pylist()
    bad = [i for i, b in enumerate(raw) if b is not None and not _is_utf8(b)]
    raise fail(f"{len(bad)} values are not valid UTF-8 (e.g. row {bad[0]}: {_display(raw[bad[0]])})")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _check_embedding(col: Column, values: pa.ChunkedArray, embedding_dim: int | None, fail) -> None:
    """All rows one length (== embedding_dim when given), no null or NaN components."""
    lengths = pc.list_value_length(values)
    if len(values) and lengths.null_count < len(values):
        bounds = pc.min_max(lengths)
        short, long = bounds["min"].as_py(), bounds["max"].as_py()
        if embedding_dim is not None and (short != embedding_dim or long != embedding_dim):
            wrong = pc.not_equal(lengths, embedding_dim)
            raise fail(f"expected embedding_dim {embedding_dim}, got length {_first_example(lengths, wrong)} "
                       f"in {_count_true(wrong)} rows")
        if short != long:
            mode = pc.mode(lengths)[0]["mode"].as_py()
            odd = pc.not_equal(lengths, mode)
            raise fail(f"embedding rows have different lengths: {_count_true(odd)} rows differ from the common "
                       f"length {mode} (e.g. length {_first_example(lengths, odd)}; "
                       f"lengths range {short}..{long})")
    flat = pc.list_flatten(values)
    if flat.null_count:
        raise fail(f"{flat.null_count} null embedding components")
    if n := _count_true(pc.is_nan(flat)):
        raise fail(f"{n} NaN embedding components")
    if n := _count_true(pc.is_inf(flat)):
        raise fail(f"{n} infinite embedding components (e.g. {_first_example(flat, pc.is_inf(flat))})")


# Timestamps every reader can hold: pandas and Feast convert to datetime64[ns], whose int64 nanoseconds span
# 1677-09-21 .. 2262-04-11; a time outside fails there with an error that names no table, so it fails here.
_TS_MIN_US, _TS_MAX_US = -(2**63) // 1000 + 1, (2**63 - 1) // 1000
_TS_RANGE = "1677-09-21 .. 2262-04-11 UTC"


def _check_time_range(values: pa.ChunkedArray, fail) -> None:
    ticks = values.cast(pa.int64())
    outside = pc.or_(pc.less(ticks, _TS_MIN_US), pc.greater(ticks, _TS_MAX_US))
    if n := _count_true(outside):
        example = _first_example(ticks, outside)
        raise fail(f"{n} timestamps out of range {_TS_RANGE} (e.g. {example} microseconds since 1970)")


def duplicate_keys(table: pa.Table, keys: list[str]) -> tuple[int, dict] | None:
    """None if the `keys` tuples of `table` are unique; else (the number of extra rows, the first repeated key as
    {key: value, ..., "count_all": its number of rows})."""
    if not keys or table.num_rows == 0:
        return None
    if len(keys) == 1 and pc.count_distinct(table.column(keys[0])).as_py() == table.num_rows:
        return None  # the common case, without a group-by
    counts = table.select(keys).group_by(keys).aggregate([([], "count_all")])
    extra = table.num_rows - counts.num_rows
    if extra == 0:
        return None
    return extra, counts.filter(pc.greater(counts.column("count_all"), 1)).slice(0, 1).to_pylist()[0]


def _check_unique_keys(schema: TableSchema, table: pa.Table, source) -> None:
    """Key tuples must be unique; the error gives the number of extra rows and one duplicated key."""
    keys = list(schema.keys)
    found = duplicate_keys(table, keys)
    if found is None:
        return
    extra, dup = found
    example = ", ".join(f"{k}={_display(dup[k])}" for k in keys)
    raise SchemaError(schema.name, ", ".join(keys),
                      f"{extra} duplicate keys (e.g. {example} appears {dup['count_all']} times)", source)


def _count_true(mask) -> int:
    return pc.sum(mask).as_py() or 0


def _first_example(values, mask) -> str:
    return _display(values.filter(mask)[0].as_py())


def _display(value) -> str:
    if isinstance(value, bytes):
        return repr(value[:8]) + ("..." if len(value) > 8 else "")
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return str(value)


def _bound_scalar(value, dtype: pa.DataType):
    try:
        return pa.scalar(value, dtype)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        return value
