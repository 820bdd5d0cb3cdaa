"""Validate an experiment log and aggregate it to one row per user (the randomisation unit).

The log has one row per (user, request), or already one row per user. Columns:

| column          | type                 | required | meaning                                        |
|-----------------|----------------------|----------|------------------------------------------------|
| user_id         | int64                | yes      | the randomisation unit                         |
| arm             | string               | yes      | exactly two arm names, e.g. control, treatment |
| impressions     | int64 >= 0           | yes      | ads shown                                      |
| clicks          | int64, <= impressions| yes      | clicks on them                                 |
| conversions     | int64, <= clicks     | yes      | conversions after those clicks                 |
| request_id      | int64                | no       | unique per user when present                   |
| ts              | timestamp, tz-aware  | no       | converted to UTC                               |
| pre_clicks      | int64 >= 0           | no       | pre-period clicks, constant per user (CUPED)   |
| pre_impressions | int64 >= 0           | no       | pre-period impressions, constant per user      |

Optional segment columns (strings; `report.segment_lifts` reads the lift within each value of those present):
query_segment (head / torso / tail query by pre-period requests), user_history (returning / new user),
new_products (some / none: the request's candidates, retrieved before ranking, include a product created inside
the experiment window). A segment must not depend on the arm: what an arm showed is an outcome, not a segment.
Other columns pass through unchecked.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

KEYS = ("user_id", "arm")
COUNTS = ("impressions", "clicks", "conversions")
REQUIRED = KEYS + COUNTS
PRE_PERIOD = ("pre_clicks", "pre_impressions")  # per-user covariates for CUPED
INT64_MAX = np.iinfo(np.int64).max
NOT_ABOVE = (("clicks", "impressions"), ("conversions", "clicks"), ("pre_clicks", "pre_impressions"))


class LogError(ValueError):
    """A log that cannot be analysed; `column` names the offending column, the message says why (one line)."""

    def __init__(self, column: str, problem: str):
        super().__init__(f"column {column!r}: {problem}")
        self.column = column


def validate_log(df: pd.DataFrame, arms: Sequence[str] | None = None) -> pd.DataFrame:
    """Return a checked copy of an experiment log (counts as int64, arm as str, ts in UTC), or raise LogError.

    `arms`, when given, are the two arm names the log must hold (e.g. ("control", "treatment")).
    Rejects: a missing or repeated column; nulls in any used column; an empty arm name; non-integer, negative or
    beyond-int64 counts; clicks > impressions; conversions > clicks; pre_clicks > pre_impressions; fewer or more
    than two arms; a user in both arms; an arm without impressions; pre-period covariates that vary within a user;
    naive or non-timestamp ts; a repeated (user_id, request_id).
    """
    repeated = df.columns[df.columns.duplicated()]
    if len(repeated):
        raise LogError(str(repeated[0]), f"appears {int((df.columns == repeated[0]).sum())} times in the log")
    has_pre_period = any(c in df.columns for c in PRE_PERIOD)
    for column in REQUIRED + (PRE_PERIOD if has_pre_period else ()):
        if column not in df.columns:
            raise LogError(column, "missing from the log")
    out = df.copy()
    for column in [c for c in (*REQUIRED, "request_id", "ts", *PRE_PERIOD) if c in out.columns]:
        _check_no_nulls(out[column], column)
    _check_integer(out["user_id"], "user_id")
    out["arm"] = out["arm"].astype(str)
    if n_empty := int((out["arm"].str.strip() == "").sum()):
        raise LogError("arm", f"{n_empty} empty arm name(s)")
    for column in [c for c in (*COUNTS, *PRE_PERIOD) if c in out.columns]:
        out[column] = _as_counts(out[column], column)
    for small, large in NOT_ABOVE:
        if small in out.columns:
            _check_not_above(out, small, large)
    _check_arms(out, arms)
    if has_pre_period:
        for column in PRE_PERIOD:
            _check_constant_per_user(out, column)
    if "ts" in out.columns:
        out["ts"] = _as_utc(out["ts"])
    if "request_id" in out.columns:
        _check_integer(out["request_id"], "request_id")
        _check_unique_requests(out)
    return out


def user_table(df: pd.DataFrame, arms: Sequence[str] | None = None) -> pd.DataFrame:
    """Validate a log and aggregate it to one row per user: user_id, arm, summed counts, pre-period covariates.

    Returns a frame sorted by user_id with columns user_id, arm, impressions, clicks, conversions
    (+ pre_clicks, pre_impressions when the log has them). Idempotent on a table that is already per user.
    """
    log = validate_log(df, arms)
    firsts = {c: "first" for c in ("arm", *PRE_PERIOD) if c in log.columns}
    sums = {c: "sum" for c in COUNTS}
    users = log.groupby("user_id", sort=True).agg({**firsts, **sums}).reset_index()
    ordered = ["user_id", "arm", *COUNTS, *[c for c in PRE_PERIOD if c in users.columns]]
    return users[ordered]


# ---- one check per function: each raises LogError naming its column ----

def _check_no_nulls(values: pd.Series, column: str) -> None:
    n_null = int(values.isna().sum())
    if n_null:
        raise LogError(column, f"{n_null} null value(s)")


def _check_integer(values: pd.Series, column: str) -> None:
    if not pd.api.types.is_integer_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise LogError(column, f"must be integer, got dtype {values.dtype}")


def _as_counts(values: pd.Series, column: str) -> pd.Series:
    """int64 counts; whole-valued floats (e.g. read back from a CSV) are accepted."""
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        raise LogError(column, f"counts must be numeric, got dtype {values.dtype}")
    as_float = values.to_numpy(dtype=float)
    if not np.all(np.isfinite(as_float)) or np.any(as_float != np.round(as_float)):
        raise LogError(column, "non-integer counts")
    if np.any(as_float < 0):
        raise LogError(column, f"negative counts (min {values.min()})")
    if len(values) and (values.max() > INT64_MAX if pd.api.types.is_integer_dtype(values)
                        else as_float.max() >= 2.0**63):  # astype would wrap them around silently
        raise LogError(column, f"counts beyond int64 (max {values.max()})")
    return values.astype("int64")


def _check_not_above(log: pd.DataFrame, small: str, large: str) -> None:
    n_bad = int((log[small] > log[large]).sum())
    if n_bad:
        raise LogError(small, f"exceeds {large!r} in {n_bad} row(s)")


def _check_arms(log: pd.DataFrame, expected: Sequence[str] | None) -> None:
    found = sorted(log["arm"].unique())
    if expected is not None and sorted(expected) != found:
        missing = sorted(set(expected) - set(found))
        raise LogError("arm", f"expected arms {sorted(expected)}, found {found} (missing {missing})")
    if len(found) != 2:
        raise LogError("arm", f"needs exactly two arms, found {len(found)}: {found}")
    arms_per_user = log.groupby("user_id")["arm"].nunique()
    in_both = arms_per_user.index[arms_per_user > 1]
    if len(in_both):
        raise LogError("arm", f"{len(in_both)} user(s) in both arms, e.g. user_id {in_both[0]}")
    impressions = log.groupby("arm")["impressions"].sum()
    empty = impressions.index[impressions == 0].tolist()
    if empty:
        raise LogError("impressions", f"empty arm(s) {empty}: no impressions")


def _check_constant_per_user(log: pd.DataFrame, column: str) -> None:
    values_per_user = log.groupby("user_id")[column].nunique()
    varying = values_per_user.index[values_per_user > 1]
    if len(varying):
        raise LogError(column, f"varies within {len(varying)} user(s), e.g. user_id {varying[0]}")


def _as_utc(ts: pd.Series) -> pd.Series:
    if not isinstance(ts.dtype, pd.DatetimeTZDtype):
        if pd.api.types.is_datetime64_dtype(ts):
            raise LogError("ts", "naive timestamps; need tz-aware (UTC) timestamps")
        raise LogError("ts", f"must be a tz-aware timestamp, got dtype {ts.dtype}")
    return ts.dt.tz_convert("UTC")


def _check_unique_requests(log: pd.DataFrame) -> None:
    n_repeated = int(log.duplicated(["user_id", "request_id"]).sum())
    if n_repeated:
        raise LogError("request_id", f"{n_repeated} repeated (user_id, request_id) pair(s)")
