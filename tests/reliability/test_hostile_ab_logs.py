"""Hostile experiment logs against experiments.ab.log.validate_log / user_table: generated columns of any dtype
(ints beyond 64 bits, floats with NaN / inf / fractions, strings, booleans, naive and zone-aware times), missing
or duplicated columns. Each validates, and then obeys every rule the analysis relies on, or raises LogError
naming the column; never another exception type."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.ab.log import COUNTS, PRE_PERIOD, REQUIRED, LogError, user_table, validate_log

HOSTILE = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow])
N = 6
COLUMNS = REQUIRED + ("request_id", "ts") + PRE_PERIOD + ("query_segment",)


def _good() -> dict:
    return {"user_id": [1, 1, 2, 3, 4, 4], "arm": ["control", "control", "treatment", "control", "treatment",
                                                   "treatment"],
            "impressions": [3, 2, 4, 1, 5, 0], "clicks": [1, 0, 2, 0, 1, 0], "conversions": [0, 0, 1, 0, 0, 0],
            "request_id": [1, 2, 1, 1, 1, 2],
            "ts": pd.date_range("2026-01-05", periods=N, freq="h", tz="UTC"),
            "pre_clicks": [2, 2, 0, 1, 3, 3], "pre_impressions": [9, 9, 0, 4, 9, 9],
            "query_segment": ["head", "tail", "head", "torso", "head", "tail"]}


SCALARS = st.one_of(
    st.none(), st.integers(-3, 12), st.integers(-(2**70), 2**70), st.sampled_from([2**63 - 1, 2**63, 2**64]),
    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 0.5, 1e30, 2.0]), st.booleans(),
    st.sampled_from(["control", "treatment", "", "x", "1"]),
    st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1),
                 timezones=st.sampled_from([None, dt.timezone.utc, dt.timezone(dt.timedelta(hours=5))])))
SERIES = st.one_of(
    st.lists(SCALARS, min_size=N, max_size=N).map(lambda v: pd.Series(v, dtype=object)),
    st.lists(st.integers(-5, 20), min_size=N, max_size=N).map(lambda v: pd.Series(v, dtype="int64")),
    st.lists(st.integers(0, 2**64 - 1), min_size=N, max_size=N).map(lambda v: pd.Series(v, dtype="uint64")),
    st.lists(st.floats(), min_size=N, max_size=N).map(lambda v: pd.Series(v, dtype="float64")),
    st.lists(st.sampled_from(["control", "treatment", "b"]), min_size=N, max_size=N).map(pd.Series),
)


@st.composite
def hostile_log(draw) -> pd.DataFrame:
    columns = _good()
    for name in draw(st.lists(st.sampled_from(COLUMNS), max_size=2, unique=True)):
        columns[name] = draw(SERIES)
    for name in draw(st.lists(st.sampled_from(COLUMNS), max_size=1)):
        del columns[name]
    return pd.DataFrame({k: list(v) if isinstance(v, pd.Series) and v.dtype == object else v
                         for k, v in columns.items()})


def _check(out: pd.DataFrame) -> None:
    """The rules the analysis relies on, in what validated."""
    for c in [c for c in (*COUNTS, *PRE_PERIOD) if c in out.columns]:
        assert out[c].dtype == np.int64 and (out[c] >= 0).all(), c
    assert (out.clicks <= out.impressions).all() and (out.conversions <= out.clicks).all()
    assert out.arm.nunique() == 2 and (out.groupby("user_id").arm.nunique() == 1).all()
    assert pd.api.types.is_integer_dtype(out.user_id)
    if "ts" in out.columns:
        assert str(out.ts.dt.tz) == "UTC"


@HOSTILE
@given(hostile_log())
def test_a_generated_log_validates_to_the_rules_or_names_the_column(frame):
    try:
        out = validate_log(frame)
    except LogError as err:
        assert type(err) is LogError and err.column in COLUMNS, str(err)
        assert str(err).startswith(f"column {err.column!r}: ")
        return
    _check(out)
    users = user_table(frame)
    assert users.user_id.is_unique and users.impressions.sum() == out.impressions.sum()


@pytest.mark.parametrize("column, values, message", [
    ("impressions", [3, 2, 4, 1, 1e30, 0], "column 'impressions': counts beyond int64 (max 1e+30)"),
    ("impressions", pd.Series([3, 2, 4, 1, 2**64 - 1, 0], dtype="uint64"),
     "column 'impressions': counts beyond int64 (max 18446744073709551615)"),
    ("clicks", [1, 0, 2, 0, math.inf, 0], "column 'clicks': non-integer counts"),
    ("clicks", [1, 0, 0.5, 0, 1, 0], "column 'clicks': non-integer counts"),
    ("clicks", [1, 0, -2, 0, 1, 0], "column 'clicks': negative counts (min -2)"),
    ("clicks", [9, 0, 2, 0, 1, 0], "column 'clicks': exceeds 'impressions' in 1 row(s)"),
    ("clicks", [True] * 6, "column 'clicks': counts must be numeric, got dtype bool"),
    ("user_id", [1.0, 1.0, 2.0, 3.0, 4.0, 4.0], "column 'user_id': must be integer, got dtype float64"),
    ("user_id", [None, 1, 2, 3, 4, 4], "column 'user_id': 1 null value(s)"),
    ("arm", ["control", "control", "", "control", "", ""], "column 'arm': 3 empty arm name(s)"),
    ("arm", ["a", "a", "b", "a", "c", "c"], "column 'arm': needs exactly two arms, found 3: ['a', 'b', 'c']"),
    ("ts", pd.date_range("2026-01-05", periods=N, freq="h"),
     "column 'ts': naive timestamps; need tz-aware (UTC) timestamps"),
    ("ts", ["2026-01-05"] * N, "column 'ts': must be a tz-aware timestamp, got dtype object"),
    ("request_id", [1, 1, 1, 1, 1, 2], "column 'request_id': 1 repeated (user_id, request_id) pair(s)"),
    ("pre_clicks", [2, 3, 0, 1, 3, 3], "column 'pre_clicks': varies within 1 user(s), e.g. user_id 1"),
])
def test_a_bad_column_is_named(column, values, message):
    frame = pd.DataFrame(_good())
    frame[column] = values
    with pytest.raises(LogError) as err:
        validate_log(frame)
    assert str(err.value) == message or str(err.value).startswith(message), str(err.value)
    assert err.value.column == column


def test_missing_and_duplicated_columns_are_named():
    frame = pd.DataFrame(_good()).drop(columns=["conversions"])
    with pytest.raises(LogError, match=r"^column 'conversions': missing from the log$"):
        validate_log(frame)
    frame = pd.concat([pd.DataFrame(_good()), pd.DataFrame({"clicks": [0] * N})], axis=1)
    with pytest.raises(LogError, match=r"^column 'clicks': appears 2 times in the log$"):
        validate_log(frame)
