"""Hostile tables against the table contracts (feature_store.schema): generated columns of any arrow dtype with
nulls, NaN, +/-inf, out-of-range integers, naive and out-of-range timestamps, embeddings of mixed widths, empty
tables, 1 MB and unicode strings. Each either validates, and then holds exactly the input's values at the
canonical dtype (nothing coerced silently), or raises SchemaError naming the table, the column and the problem;
never another exception type."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_store.schema import EMBEDDING, TABLES, SchemaError, read_table, validate, write_table
from feature_store.schema.tables import CLICK_LOG
from feature_store.schema.validation import validate_against
from tests.feature_store.schema.valid_tables import valid_table

HOSTILE = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

INT_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint32(), pa.uint64()]
FLOAT_TYPES = [pa.float16(), pa.float32(), pa.float64()]
TS_TYPES = [pa.timestamp(u, tz) for u in ("s", "ms", "us", "ns") for tz in (None, "UTC", "Asia/Kolkata")]
LIST_TYPES = [pa.list_(pa.float32()), pa.list_(pa.float64()), pa.large_list(pa.float32()),
              pa.list_(pa.int64()), pa.list_(pa.float16())]
OTHER_TYPES = [pa.string(), pa.large_string(), pa.binary(), pa.bool_(), pa.null(),
               pa.dictionary(pa.int32(), pa.string())]
ALL_TYPES = INT_TYPES + FLOAT_TYPES + TS_TYPES + LIST_TYPES + OTHER_TYPES
SPECIAL_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.5, 5.0, 1e-45, 3.4e38, 1e300, -1e300, math.inf, -math.inf, math.nan]
TEXT = st.one_of(st.text(max_size=20), st.just(""), st.just(" \t"), st.just("é" * 1_000_000),
                 st.just("😀中文\u200b"), st.just("x" * 1_000_000))


def _ints(t: pa.DataType):
    info = np.iinfo(t.to_pandas_dtype())
    edges = [int(info.min), int(info.max), 0, 1, -1, 2, 127, 128, 2**31, 2**63 - 1]
    return st.one_of(st.sampled_from([e for e in edges if info.min <= e <= info.max]),
                     st.integers(int(info.min), int(info.max)))


def _values(t: pa.DataType):
    """A strategy of python values of arrow type `t` (None = null)."""
    if pa.types.is_integer(t):
        v = _ints(t)
    elif pa.types.is_floating(t):
        v = st.one_of(st.sampled_from(SPECIAL_FLOATS), st.sampled_from([0.25, 1.0, math.inf]),
                      st.floats(allow_nan=True, allow_infinity=True))
    elif pa.types.is_timestamp(t):
        factor = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[t.unit]
        edge = [0, 1, -1, 1_700_000_000 * factor, 253402300799 * factor,  # 9999-12-31
                9_223_372_036_854 * factor, 2**62, -(2**62)]  # 2262-04-11, beyond it in every unit but ns
        v = st.one_of(st.sampled_from([e for e in edge if abs(e) < 2**63]), st.integers(-(2**62), 2**62))
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        v = st.lists(_values(t.value_type), max_size=5)
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        v = TEXT
    elif pa.types.is_binary(t):
        v = st.one_of(st.binary(max_size=12), st.just(b"\x89PNG\r\n\x1a\n" + b"\0" * 5), st.just(b""))
    elif pa.types.is_boolean(t):
        v = st.booleans()
    else:  # null
        return st.none()
    return st.one_of(v, v, v, st.none())  # nulls in one value of four: a column with none is often drawn too


@st.composite
def hostile_column(draw, n: int, canonical: pa.DataType):
    """An arrow array of n rows: of the column's own dtype (hostile values only) or of a random one."""
    t = draw(st.one_of(st.just(canonical), st.just(canonical), st.sampled_from(ALL_TYPES)))
    values = draw(st.lists(_values(t), min_size=n, max_size=n))
    if pa.types.is_timestamp(t):
        return pa.array(values, pa.int64()).cast(t)  # raw ticks: any int64 is a timestamp of that unit
    if t == pa.string() and draw(st.integers(0, 3)) == 0:  # any bytes, as a parquet string column may hold
        return pa.array(draw(st.lists(st.one_of(st.none(), st.binary(max_size=6)), min_size=n, max_size=n)),
                        pa.binary()).view(pa.string())
    return pa.array(values, t)


@st.composite
def hostile_table(draw, names=tuple(sorted(TABLES))):
    """(table name, table): a valid table with 1-3 columns replaced by hostile ones, maybe some dropped, rows
    duplicated or the whole table emptied."""
    name = draw(st.sampled_from(names))
    n = draw(st.sampled_from([1, 3, 0]))
    table = valid_table(name, max(n, 1)).slice(0, n)
    cols = table.column_names
    poison_only = draw(st.booleans())  # else hostile columns, then maybe a non-finite value too
    for col in [] if poison_only else draw(st.lists(st.sampled_from(cols), min_size=1, max_size=2, unique=True)):
        table = table.set_column(cols.index(col), col, draw(hostile_column(n, table.schema.field(col).type)))
    floats = [c for c in cols if pa.types.is_floating(table.schema.field(c).type)
              or pa.types.is_list(table.schema.field(c).type)]
    if n and floats and (poison_only or draw(st.booleans())):  # one non-finite value in a float or embedding column
        col, row = draw(st.sampled_from(floats)), draw(st.integers(0, n - 1))
        bad = draw(st.sampled_from([math.inf, -math.inf, math.nan]))
        values = table.column(col).to_pylist()
        values[row] = [bad] * 4 if pa.types.is_list(table.schema.field(col).type) else bad
        table = table.set_column(cols.index(col), col, pa.array(values, table.schema.field(col).type))
    if n and draw(st.booleans()):
        table = pa.concat_tables([table, table.slice(0, 1)])  # a duplicated row: duplicate keys
    if draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()):
        table = table.drop_columns([draw(st.sampled_from(cols))])
    return name, table


def _ticks(column: pa.ChunkedArray) -> list:
    """Python values comparable across dtypes: timestamps as UTC microseconds, floats as float32 (the declared
    width: float64 input is stored as float32, a documented rounding), NaN as a marker."""
    if pa.types.is_timestamp(column.type):
        return column.cast(pa.int64()).to_pylist()
    values = column.to_pylist()

    def norm(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else float(np.float32(v))
        if isinstance(v, list):
            return [norm(x) for x in v]
        return v
    return [norm(v) for v in values]


def _canonical_ticks(column: pa.ChunkedArray, dtype: pa.DataType) -> list:
    if pa.types.is_timestamp(column.type):
        factor = {"s": 10**6, "ms": 10**3, "us": 1, "ns": 1}[column.type.unit]
        ticks = column.cast(pa.int64()).to_pylist()
        return [None if v is None else (v * factor if column.type.unit != "ns" else v // 1000) for v in ticks]
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return _ticks(column)


def _assert_named(err: SchemaError, name: str, table: pa.Table) -> None:
    assert type(err) is SchemaError
    assert err.table == name and str(err).startswith(f"table '{name}'")
    assert err.problem and err.problem in str(err)
    if err.column is not None:
        named = [c.strip() for c in err.column.split(",")]
        assert all(c in table.column_names or c in TABLES.get(name, CLICK_LOG).names for c in named), err.column
        assert f"column '{err.column}'" in str(err)


def _assert_round_trip(name: str, table: pa.Table, result: pa.Table) -> None:
    """What validates holds the input's values: same rows, each column equal at the canonical dtype."""
    assert result.num_rows == table.num_rows
    declared = TABLES.get(name, CLICK_LOG).names
    for col in result.column_names:
        if col not in declared:  # extra columns pass through unchanged
            assert result.column(col).type == table.column(col).type
            assert _ticks(result.column(col)) == _ticks(table.column(col)), col
            continue
        assert _ticks(result.column(col)) == _canonical_ticks(table.column(col), result.column(col).type), col


def _assert_contract(name: str, result: pa.Table) -> None:
    """The value rules the issue names hold in what validated: no inf or NaN in a float or embedding column."""
    schema = TABLES.get(name, CLICK_LOG)
    for col in schema.columns:
        if col.name not in result.column_names:
            continue
        values = result.column(col.name)
        if pa.types.is_list(col.dtype):
            values = values.combine_chunks().flatten() if len(values) else values
        if pa.types.is_floating(values.type) and len(values):
            flat = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
            assert np.isfinite(flat[~np.isnan(flat)]).all(), f"{name}.{col.name} holds inf"
            assert col.nullable or not np.isnan(flat).any(), f"{name}.{col.name} holds NaN"


@HOSTILE
@given(hostile_table())
def test_a_generated_table_validates_exactly_or_raises_schema_error_naming_table_and_column(case):
    name, table = case
    try:
        result = validate(name, table)
    except SchemaError as err:
        _assert_named(err, name, table)
        return
    _assert_round_trip(name, table, result)
    _assert_contract(name, result)


@settings(HOSTILE, max_examples=25)
@given(hostile_table(names=("products", "impressions", "product_embeddings", "training_set")))
def test_write_then_read_gives_back_what_validated_or_write_refuses(tmp_path_factory, case):
    name, table = case
    folder = tmp_path_factory.mktemp("t") / name
    try:
        path = write_table(name, table, folder)
    except SchemaError as err:
        _assert_named(err, name, table)
        assert not folder.exists() or not any(folder.iterdir())  # nothing written for a refused table
        return
    back = read_table(name, path)
    assert back.equals(validate(name, table))


@HOSTILE
@given(hostile_table(names=("training_set",)))
def test_the_click_log_contract_accepts_or_names_the_column(case):
    _, table = case
    try:
        result = validate_against(CLICK_LOG, table, "log.parquet", None, None)
    except SchemaError as err:
        _assert_named(err, "click_log", table)
        return
    _assert_round_trip("click_log", table, result)


# ------------------------------------------------------------------------------------------ hand cases


@pytest.mark.parametrize("column, value, problem", [
    ("embedding", [math.inf, 0.0, 0.0, 0.0], "1 infinite embedding components"),
    ("embedding", [0.0, -math.inf, 0.0, 0.0], "1 infinite embedding components"),
    ("embedding", [math.nan, 0.0, 0.0, 0.0], "1 NaN embedding components"),
    ("embedding", [0.0, 0.0, 0.0], "embedding rows have different lengths"),
    ("embedding", None, "1 null values"),
    ("embedding", [0.0, None, 0.0, 0.0], "1 null embedding components"),
])
def test_embedding_inf_nan_null_and_width_are_named(column, value, problem):
    table = valid_table("product_embeddings", 3)
    values = table.column(column).to_pylist()
    values[1] = value
    with pytest.raises(SchemaError) as err:
        validate("product_embeddings", table.set_column(1, column, pa.array(values, EMBEDDING)))
    assert err.value.column == column and problem in err.value.problem


def test_embedding_of_another_width_than_asked_is_named():
    with pytest.raises(SchemaError, match=r"column 'embedding': expected embedding_dim 8, got length 4 in 3 rows"):
        validate("product_embeddings", valid_table("product_embeddings", 3), embedding_dim=8)


@pytest.mark.parametrize("name, column", [("impressions", "price"), ("training_set", "product_clicks_7d"),
                                          ("query_truth", "weight"), ("user_history_features", "history_count")])
@pytest.mark.parametrize("value", [math.inf, -math.inf])
def test_inf_in_a_float_column_is_refused(name, column, value):
    table = valid_table(name, 3)
    values = table.column(column).to_pylist()
    values[2] = value
    i = table.column_names.index(column)
    with pytest.raises(SchemaError) as err:
        validate(name, table.set_column(i, column, pa.array(values, table.schema.field(column).type)))
    assert err.value.column == column and err.value.problem == f"1 infinite values (e.g. {value})"


def test_naive_and_out_of_range_timestamps_are_named():
    table = valid_table("impressions", 2)
    naive = pa.array([dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2)], pa.timestamp("us"))
    with pytest.raises(SchemaError, match=r"column 'ts': timestamp without a time zone \(timestamp\[us\]\)"):
        validate("impressions", table.set_column(2, "ts", naive))
    far = pa.array([0, 2**62], pa.int64()).cast(pa.timestamp("s", "UTC"))  # 2**62 s: no int64 microsecond
    with pytest.raises(SchemaError) as err:
        validate("impressions", table.set_column(2, "ts", far))
    assert err.value.column == "ts" and "out of range" in err.value.problem


def test_huge_and_unicode_strings_round_trip(tmp_path):
    title = "é😀" * 500_000  # 3 MB of UTF-8
    table = valid_table("products", 2, title=[title, "\u200b"])
    back = read_table("products", write_table("products", table, tmp_path / "p"))
    assert back.column("title").to_pylist() == [title, "\u200b"]
    with pytest.raises(SchemaError, match=r"column 'title': 1 empty values"):
        validate("products", valid_table("products", 2, title=["", "x"]))
    with pytest.raises(SchemaError, match=r"column 'query_text': 1 empty values \(after stripping whitespace\)"):
        validate("queries", valid_table("queries", 2, query_text=["\u3000 \t", "x"]))


def test_a_non_table_is_a_type_error_naming_the_table():  # a caller's bug, not a user's data
    with pytest.raises(TypeError, match=r"table 'products': expected a pyarrow Table or pandas DataFrame, got list"):
        validate("products", [1, 2, 3])


ANY_PY = st.one_of(st.none(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=5), st.binary(max_size=5),
                   st.booleans(), st.lists(st.floats(), max_size=3), st.just(object()),
                   st.datetimes(timezones=st.sampled_from([None, dt.timezone.utc])))


@HOSTILE
@given(st.sampled_from(["queries", "impressions", "product_embeddings"]), st.data())
def test_a_dataframe_with_a_column_of_python_objects_validates_or_names_the_column(name, data):
    frame = valid_table(name, 3).to_pandas()
    column = data.draw(st.sampled_from(list(frame.columns)))
    frame[column] = pd.Series(data.draw(st.lists(ANY_PY, min_size=3, max_size=3)), dtype=object)
    try:
        result = validate(name, frame)
    except SchemaError as err:
        assert err.table == name and err.column == column, str(err)
        return
    assert result.num_rows == 3
    _assert_contract(name, result)


def test_dataframe_conversion_errors_name_the_column():
    frame = pd.DataFrame({"query_id": [1, 2], "query_text": [2**70, 1]})
    with pytest.raises(SchemaError, match=r"^table 'queries': column 'query_text': cannot convert to arrow "
                                          r"\(dtype object\): Python int too large to convert to C long$"):
        validate("queries", frame)
    frame = pd.DataFrame([[1, "a", "b"]], columns=["query_id", "query_text", "query_text"])
    with pytest.raises(SchemaError, match=r"^table 'queries': column 'query_text': duplicate column name$"):
        validate("queries", frame)


def test_a_truncated_parquet_file_is_a_schema_error_naming_table_and_file(tmp_path):
    from feature_store.schema import UnreadableTableError, table_columns

    folder = tmp_path / "queries"
    write_table("queries", valid_table("queries", 2), folder, part=0)
    bad = write_table("queries", valid_table("queries", 1).set_column(0, "query_id", pa.array([9], pa.int64())),
                      folder, part=1)
    bad.write_bytes(bad.read_bytes()[:40])
    for read in (read_table, table_columns):
        with pytest.raises(UnreadableTableError) as err:
            read("queries", folder)
        assert isinstance(err.value, SchemaError) and isinstance(err.value, pa.ArrowInvalid)  # old callers too
        assert str(err.value).startswith(f"table 'queries' ({bad}): not a readable parquet file (truncated or "
                                          f"another format: Parquet magic bytes not found")


@pytest.mark.parametrize("name, column", [("queries", "query_text"), ("products", "title"), ("impressions", "device")])
def test_invalid_utf8_in_a_text_column_is_named(tmp_path, name, column):
    table = valid_table(name, 2)
    bad = pa.array([b"ok", b"caf\xe9"], pa.binary()).view(pa.string())  # a parquet file may hold any bytes
    table = table.set_column(table.column_names.index(column), column, bad)
    pq.write_table(table, tmp_path / "t.parquet")
    for check in (lambda: validate(name, table), lambda: read_table(name, tmp_path / "t.parquet")):
        with pytest.raises(SchemaError) as err:
            check()
        assert err.value.column == column
        assert err.value.problem == "1 values are not valid UTF-8 (e.g. row 1: b'caf\\xe9')"
