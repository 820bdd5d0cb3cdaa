"""validate_log rejects each kind of bad log with a LogError naming the column; user_table sums per user."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments.ab.log import LogError, user_table, validate_log
from tests.experiments.ab.synthetic import synthetic_log


def good_log() -> pd.DataFrame:
    """Four users, six requests: users 1, 2 in control, 3, 4 in treatment."""
    return pd.DataFrame({
        "user_id": [1, 1, 2, 3, 3, 4],
        "arm": ["control", "control", "control", "treatment", "treatment", "treatment"],
        "request_id": [10, 11, 12, 13, 14, 15],
        "ts": pd.to_datetime(["2024-05-01 10:00"] * 6).tz_localize("Europe/Paris"),
        "impressions": [5, 3, 4, 6, 2, 5],
        "clicks": [1, 0, 2, 1, 1, 0],
        "conversions": [1, 0, 0, 0, 1, 0],
        "pre_clicks": [2, 2, 0, 3, 3, 1],
        "pre_impressions": [10, 10, 8, 12, 12, 9],
    })


def _set(column, row, value):
    def mutate(log):
        if value is None or isinstance(value, float):  # a dtype that holds the value
            log[column] = log[column].astype(object if value is None else float)
        log.loc[row, column] = value
        return log
    return mutate


BAD_LOGS = {  # case -> (mutation of good_log, column named in the error, words in the message)
    "missing column": (lambda log: log.drop(columns="clicks"), "clicks", "missing"),
    "half of the pre-period": (lambda log: log.drop(columns="pre_impressions"), "pre_impressions", "missing"),
    "one arm": (lambda log: log.assign(arm="control"), "arm", "found 1"),
    "three arms": (_set("arm", 5, "other"), "arm", "found 3"),
    "user in both arms": (_set("arm", 1, "treatment"), "arm", "both arms, e.g. user_id 1"),
    "negative count": (_set("clicks", 3, -1), "clicks", "negative"),
    "fractional count": (_set("impressions", 0, 4.5), "impressions", "non-integer"),
    "text count": (lambda log: log.assign(conversions=log["conversions"].astype(str)), "conversions", "numeric"),
    "clicks > impressions": (_set("clicks", 4, 3), "clicks", "exceeds 'impressions' in 1 row"),
    "conversions > clicks": (_set("conversions", 1, 1), "conversions", "exceeds 'clicks' in 1 row"),
    "pre_clicks > pre_impressions": (
        lambda log: log.assign(pre_clicks=np.where(log["user_id"] == 2, 9, log["pre_clicks"])),
        "pre_clicks", "exceeds 'pre_impressions'"),
    "empty arm": (
        lambda log: log.assign(**{c: np.where(log["arm"] == "treatment", 0, log[c])
                                  for c in ("impressions", "clicks", "conversions")}),
        "impressions", "empty arm(s) ['treatment']"),
    "null user_id": (lambda log: log.assign(user_id=[1, 1, None, 3, 3, 4]), "user_id", "1 null"),
    "null arm": (_set("arm", 2, None), "arm", "1 null"),
    "null count": (_set("clicks", 2, None), "clicks", "1 null"),
    "float user_id": (lambda log: log.assign(user_id=log["user_id"] + 0.5), "user_id", "integer"),
    "naive timestamps": (lambda log: log.assign(ts=log["ts"].dt.tz_localize(None)), "ts", "naive"),
    "text timestamps": (lambda log: log.assign(ts="2024-05-01"), "ts", "tz-aware"),
    "pre-period varies within a user": (_set("pre_clicks", 1, 5), "pre_clicks", "varies within 1 user"),
    "repeated request": (_set("request_id", 1, 10), "request_id", "1 repeated"),
}


@pytest.mark.parametrize("case", BAD_LOGS)
def test_each_bad_log_raises_a_one_line_error_naming_its_column(case):
    mutate, column, words = BAD_LOGS[case]
    with pytest.raises(LogError) as error:
        validate_log(mutate(good_log()))
    assert error.value.column == column
    assert str(error.value).startswith(f"column {column!r}: ")
    assert words in str(error.value)
    assert "\n" not in str(error.value)


def test_expected_arm_names_are_checked():
    log = good_log().assign(arm=lambda d: d["arm"].map({"control": "old", "treatment": "new"}))
    with pytest.raises(LogError, match="missing \\['control', 'treatment'\\]") as error:
        validate_log(log, arms=("control", "treatment"))
    assert error.value.column == "arm"
    assert len(validate_log(log, arms=("old", "new"))) == 6


def test_a_good_log_comes_back_typed_with_utc_timestamps_and_extra_columns_kept():
    log = good_log().assign(impressions=lambda d: d["impressions"].astype(float), country="FR")
    checked = validate_log(log)
    assert checked["impressions"].dtype == np.int64
    assert str(checked["ts"].dt.tz) == "UTC"
    assert checked["ts"].iloc[0] == pd.Timestamp("2024-05-01 08:00", tz="UTC")  # 10:00 in Paris, summer time
    assert list(checked["country"]) == ["FR"] * 6
    assert log["impressions"].dtype == float  # the input is not modified


def test_the_optional_columns_are_optional():
    minimal = good_log()[["user_id", "arm", "impressions", "clicks", "conversions"]]
    assert list(user_table(minimal).columns) == ["user_id", "arm", "impressions", "clicks", "conversions"]


def test_user_table_sums_counts_and_keeps_the_pre_period_per_user():
    users = user_table(good_log())
    expected = pd.DataFrame({
        "user_id": [1, 2, 3, 4],
        "arm": ["control", "control", "treatment", "treatment"],
        "impressions": [8, 4, 8, 5],
        "clicks": [1, 2, 2, 0],
        "conversions": [1, 0, 1, 0],
        "pre_clicks": [2, 0, 3, 1],
        "pre_impressions": [10, 8, 12, 9],
    })
    pd.testing.assert_frame_equal(users, expected)


def test_user_table_is_idempotent_and_matches_a_direct_aggregation():
    log = synthetic_log(np.random.default_rng(0), n_users=50)
    users = user_table(log)
    pd.testing.assert_frame_equal(user_table(users), users)
    assert len(users) == 50
    assert users["clicks"].sum() == log["clicks"].sum()
    by_user = log.groupby("user_id")["impressions"].sum()
    assert (users.set_index("user_id")["impressions"] == by_user).all()
