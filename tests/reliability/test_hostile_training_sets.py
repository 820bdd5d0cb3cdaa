"""Hostile training sets (ranking.training_set.load_training_set) and click logs (python -m ranking.prepare):
naive timestamps, repeated impression ids, inf, NaN, labels that are not 0/1, embeddings of the wrong width, null
or infinite, files that are not parquet, a metadata.json that is not JSON. Each raises TrainingSetError (training
sets) or LoaderError (logs) naming the split or file, the column and the problem; what loads is finite."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ranking.config import FeatureConfig
from ranking.loaders import LoaderError
from ranking.prepare import PrepareConfig, prepare
from ranking.training_set import Embeddings, TrainingSetError, load_training_set
from tests.helpers.training_sets import make_training_set, rewrite_split

FC = FeatureConfig()
HOSTILE = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_training_set(tmp_path_factory.mktemp("hostile_ts"), n_requests=60)


@pytest.fixture
def copy(synth, tmp_path):
    target = tmp_path / "ts"
    shutil.copytree(synth, target)
    return target


def _set(table: pa.Table, name: str, values) -> pa.Table:
    array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values,
                                                                                    table.schema.field(name).type)
    return table.set_column(table.column_names.index(name), name, array)


def _replace(values: list, rows: dict) -> list:
    return [rows.get(i, v) for i, v in enumerate(values)]


FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e38, 3.5e38, -1.0, None])
HOSTILE_EDITS = st.one_of(
    st.tuples(st.just("price"), st.dictionaries(st.integers(0, 5), FLOATS, min_size=1, max_size=2)),
    st.tuples(st.just("click"), st.dictionaries(st.integers(0, 5), st.sampled_from([0, 1, 2, -1, 127, None]),
                                                min_size=1, max_size=2)),
    st.tuples(st.just("product_embedding"), st.dictionaries(
        st.integers(0, 5), st.one_of(st.none(), st.lists(FLOATS.filter(lambda v: v is not None), min_size=15,
                                                          max_size=17)), min_size=1, max_size=2)),
)


@HOSTILE
@given(HOSTILE_EDITS, st.sampled_from(["fail", "impute"]))
def test_a_hostile_value_in_a_split_loads_finite_or_names_the_split_and_column(copy, edit, nan_policy):
    column, rows = edit
    work = copy.parent / "work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(copy, work)
    rewrite_split(work, "train", lambda t: _set(t, column, _replace(t.column(column).to_pylist(), rows)))
    fc = FeatureConfig(nan_policy=nan_policy)
    try:
        data = load_training_set(work, fc)
    except TrainingSetError as err:
        assert f"split 'train' ({work / 'train'}" in str(err) and f"'{column}'" in str(err), str(err)
        return
    train = data["train"]
    assert set(np.unique(train.labels)) <= {0, 1}
    for c in data.spec.dense:
        assert np.isfinite(train.columns[c]).all(), c
    for c in data.spec.embeddings:
        assert isinstance(train.columns[c], Embeddings) and np.isfinite(train.columns[c].table).all()


def _where(folder, split="train") -> str:
    return f"split '{split}' ({folder / split})"


@pytest.mark.parametrize("column, rows, message", [
    ("price", {1: math.inf}, "dense feature 'price' has 1 infinite values (e.g. inf in row 1)"),
    ("price", {1: -math.inf}, "dense feature 'price' has 1 infinite values (e.g. -inf in row 1)"),
    ("price", {2: math.nan}, "dense feature 'price' has 1 NaN/null values; fix the data or set "
                             "features.nan_policy=impute"),
    ("click", {0: 2}, "label 'click' must be 0 or 1 (any integer, float or boolean dtype); found 1 other "
                      "value(s), e.g. 2.0"),
    ("click", {0: None}, "label 'click' has 1 null values"),
    ("product_embedding", {3: [1.0] * 15}, "embedding column 'product_embedding' should have width 16 but 1 of"),
    ("product_embedding", {3: None}, "embedding column 'product_embedding' has 1 null rows"),
    ("product_embedding", {3: [math.inf] + [0.0] * 15},
     "embedding column 'product_embedding' has infinite components (0 NaN, 1 inf, in 1 rows, e.g. row 3)"),
    ("impression_id", {1: 1, 0: 1}, "column 'impression_id' has 1 duplicate values (e.g. 1 appears 2 times)"),
])
def test_a_bad_value_is_named(copy, column, rows, message):
    rewrite_split(copy, "train", lambda t: _set(t, column, _replace(t.column(column).to_pylist(), rows)))
    with pytest.raises(TrainingSetError) as err:
        load_training_set(copy, FC)
    assert str(err.value).startswith(_where(copy)) and message in str(err.value), str(err.value)


def test_an_impression_in_two_splits_is_named(copy):
    first_test_id = pq.read_table(copy / "test").column("impression_id")[0].as_py()
    rewrite_split(copy, "train", lambda t: _set(t, "impression_id", _replace(
        t.column("impression_id").to_pylist(), {0: first_test_id})))
    with pytest.raises(TrainingSetError, match=rf"^split 'test' \(.*\): column 'impression_id' shares 1 values with "
                                               rf"split 'train' \(e.g. {first_test_id}\); a row belongs to one split"):
        load_training_set(copy, FC)


def test_naive_timestamps_are_named(copy):
    rewrite_split(copy, "valid", lambda t: _set(t, "ts", t.column("ts").cast(pa.timestamp("us"))))
    with pytest.raises(TrainingSetError) as err:
        load_training_set(copy, FC)
    assert str(err.value) == (f"split 'valid' ({copy / 'valid' / 'part-00000.parquet'}): column 'ts' has dtype "
                              f"timestamp[us]; expected a timestamp with a time zone (UTC instants, e.g. "
                              f"timestamp[us, tz=UTC])")


def test_a_truncated_parquet_file_is_named(copy):
    path = copy / "test" / "part-00000.parquet"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(TrainingSetError, match=rf"^split 'test' \({path}\): not a readable parquet file "
                                               r"\(truncated or another format: "):
        load_training_set(copy, FC)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not a readable JSON file"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"embedding_dim": "16"}', "'embedding_dim' must be a non-negative integer, got '16'"),
    ('{"embedding_dim": -1}', "'embedding_dim' must be a non-negative integer, got -1"),
])
def test_a_bad_metadata_file_is_named(copy, text, message):
    (copy / "metadata.json").write_text(text)
    with pytest.raises(TrainingSetError) as err:
        load_training_set(copy, FC)
    assert str(err.value).startswith(f"{copy / 'metadata.json'}: ") and message in str(err.value)


def test_a_large_integer_dense_feature_loads_rounded_to_float32(copy):
    rewrite_split(copy, "train", lambda t: _set(t, "rating_count", pa.array(
        [2**40 + 1] + t.column("rating_count").to_pylist()[1:], pa.int64())))
    data = load_training_set(copy, FC)
    assert data["train"].columns["rating_count"][0] == np.float32(2**40)


# ------------------------------------------------------------------------------------------ ranking.prepare


def _log(n: int = 60, **columns) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"click": np.arange(n) % 2, "impression_id": np.arange(n, dtype=np.int64),
                          "x": rng.normal(size=n), "c": [f"v{i % 5}" for i in range(n)]})
    for name, values in columns.items():
        frame[name] = values
    return frame


def _prepare(tmp_path, frame: pd.DataFrame | None = None, suffix: str = ".parquet", raw: bytes | None = None,
             **overrides):
    path = tmp_path / f"log{suffix}"
    if raw is not None:
        path.write_bytes(raw)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    cfg = PrepareConfig(input=str(path), out=str(tmp_path / "out"), **overrides)
    return path, lambda: prepare(cfg)


@pytest.mark.parametrize("edit, message", [
    (dict(x=[math.inf] + [0.0] * 59), "numeric column 'x' has 1 infinite or float32-overflowing values (e.g. inf "
                                      "in row 0)"),
    (dict(x=[1e300] + [0.0] * 59), "numeric column 'x' has 1 infinite or float32-overflowing values (e.g. 1e+300"),
    (dict(impression_id=[7] * 60), "column 'impression_id' has 59 repeated values (e.g. 7): an impression id names "
                                   "one row"),
    (dict(ts=pd.date_range("2024-01-01", periods=60, freq="h")),
     "column 'ts' has naive timestamps (datetime64[ns]); give them a time zone"),
    (dict(click=[2] + [0, 1] * 29 + [0]), "label 'click' must hold only 0 and 1"),
    (dict(ts=np.arange(60) * 3600), "column 'ts' holds numbers (int64), not times: give ISO-8601 text"),
])
def test_prepare_names_the_bad_column(tmp_path, edit, message):
    path, run = _prepare(tmp_path, _log(**edit))
    with pytest.raises(LoaderError) as err:
        run()
    assert str(err.value).startswith(str(path)) and message in str(err.value), str(err.value)
    assert not (tmp_path / "out").exists()


def test_prepare_names_unparsable_times_in_a_csv(tmp_path):
    path, run = _prepare(tmp_path, _log(ts=["2024-01-01T00:00:00Z"] * 59 + ["yesterday"]), suffix=".csv")
    with pytest.raises(LoaderError, match=rf"^{path}: column 'ts' has 1 values that are not times in 1677..2262 "
                                          r"\(e.g. 'yesterday'\)$"):
        run()


@pytest.mark.parametrize("suffix, raw, message", [
    (".parquet", b"PAR1 truncated", "cannot read the click log (ArrowInvalid: "),
    (".csv", "click,x\n1,caf\u00e9\n".encode("latin-1"), "cannot read the click log (UnicodeDecodeError: "),
    (".csv", b"", "cannot read the click log (EmptyDataError: "),
])
def test_prepare_names_an_unreadable_file(tmp_path, suffix, raw, message):
    path, run = _prepare(tmp_path, suffix=suffix, raw=raw)
    with pytest.raises(LoaderError) as err:
        run()
    assert str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_a_prepared_set_loads_and_replaces_the_old_one_whole(tmp_path):
    _, run = _prepare(tmp_path, _log(ts=pd.date_range("2024-01-01", periods=60, freq="h", tz="UTC")))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.txt").write_text("old")
    meta = run()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metadata.json", "ranking.yaml", "test",
                                                                    "train", "valid"]
    assert json.loads((tmp_path / "out" / "metadata.json").read_text()) == meta
    data = load_training_set(tmp_path / "out", FeatureConfig(id_features=("c",), dense_features=("x",),
                                                             count_features="none", nan_policy="impute"),
                             use_embeddings=False)
    assert sum(len(data[s]) for s in ("train", "valid", "test")) == 60
