"""A user's own click log through ranking: optional keys, float labels, defaults that never name absent columns,
no oracle from a default path. Each test here failed on the behaviour before the click-log contract."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ranking.baselines import GBDT, HashedLogisticRegression, HistoricalCTR, gbdt_categorical, required_columns
from ranking.config import BaselineConfig, FeatureConfig, SliceConfig
from ranking.report import oracle_world, skipped_evaluations, skipped_note, split_metrics
from ranking.slices import skipped_slices, slice_masks
from ranking.training_set import TrainingSetError, load_training_set

FEATURES = FeatureConfig(id_features=("site", "ad"), dense_features=("x",), log_features=(), count_features="none")


def write_log_set(folder, n=3000, seed=0, label_dtype=np.int8, extra=None, metadata=None):
    """A training set as a user's click log gives it: a label, two id features and one dense one; no keys."""
    rng = np.random.default_rng(seed)
    for k, split in enumerate(("train", "valid", "test")):
        m = n if split == "train" else n // 3
        site = rng.integers(0, 20, m)
        ad = rng.integers(0, 50, m)
        x = rng.normal(size=m).astype(np.float32)
        p = 1 / (1 + np.exp(-(-1.5 + 0.08 * site - 0.8 * x + 0.5 * (ad % 3 == 0))))
        y = (rng.random(m) < p).astype(label_dtype)
        cols = {"click": y, "site": site, "ad": ad, "x": x}
        if extra is not None:
            cols.update(extra(split, m))
        (folder / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), folder / split / "part-00000.parquet")
    (folder / "metadata.json").write_text(json.dumps(metadata if metadata is not None else {"world": None}))
    return folder


@pytest.fixture(scope="module")
def log_set(tmp_path_factory):
    folder = write_log_set(tmp_path_factory.mktemp("own") / "log")
    return load_training_set(folder, FEATURES, use_embeddings=False)


def test_a_log_without_the_six_key_columns_loads(log_set):
    # before: impression_id, request_id, user_id, query_id, product_id and position were always required
    assert len(log_set["train"]) == 3000
    assert not {"impression_id", "request_id", "user_id", "query_id", "product_id", "position"} & set(
        log_set["test"].columns)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.uint8, np.bool_])
def test_a_float_or_any_integer_0_1_label_is_accepted(tmp_path, dtype):
    data = load_training_set(write_log_set(tmp_path / "f", n=300, label_dtype=dtype), FEATURES,
                             use_embeddings=False)
    assert data["train"].labels.dtype == np.int8 and set(np.unique(data["train"].labels)) == {0, 1}


def test_a_label_other_than_0_1_is_refused_with_its_value(tmp_path):
    folder = write_log_set(tmp_path / "f", n=300, label_dtype=np.float64)
    t = pq.read_table(folder / "test" / "part-00000.parquet")
    pq.write_table(t.set_column(0, "click", pa.array(np.full(t.num_rows, 0.5))), folder / "test" / "part-00000.parquet")
    with pytest.raises(TrainingSetError, match="split 'test'.*'click' must be 0 or 1.*e.g. 0.5"):
        load_training_set(folder, FEATURES, use_embeddings=False)


def test_slices_and_gauc_are_skipped_and_said_so_when_their_columns_are_absent(log_set):
    train, test = log_set["train"], log_set["test"]
    assert slice_masks(train, test, SliceConfig()) == {}  # before: KeyError, or masks over the whole split
    skipped = skipped_slices(train, test)
    assert skipped["product_new/old"] == "no product_id column"
    assert skipped["query_head/torso/tail"] == "no query_id, request_id column"
    y = test.labels
    out = split_metrics("test", y, np.linspace(0, 1, len(y)), test, {}, 100)
    assert "test/auc" in out and not any("gauc" in k for k in out)
    note = skipped_note(skipped_evaluations(test, skipped, "no world"))
    assert "gauc_request: no request_id column" in note and "gauc_user: no user_id column" in note
    assert "(oracle): no world" in note


def test_slices_exist_only_for_the_columns_present(tmp_path):
    folder = write_log_set(tmp_path / "p", n=600, extra=lambda split, m: {
        "position": np.arange(m) % 3 + 1, "product_id": np.arange(m) % (40 if split == "train" else 60)})
    data = load_training_set(folder, FEATURES, use_embeddings=False)
    masks = slice_masks(data["train"], data["test"], SliceConfig())
    assert set(masks) == {"product_new", "product_old", "position_1", "position_2", "position_3"}
    assert masks["product_new"].any() and not masks["product_new"].all()


def test_default_lr_crosses_apply_only_where_their_columns_exist(log_set):
    cfg = BaselineConfig()
    assert required_columns("logistic_regression", cfg, log_set["train"].columns) == ()
    model = HashedLogisticRegression(cfg).fit(log_set)  # before: KeyError / "uses aisle"
    assert model.crosses == ()
    assert 0.6 < _auc(log_set, model) < 1.0
    explicit = BaselineConfig(lr_crosses=(("site", "nope"),))
    assert required_columns("logistic_regression", explicit, log_set["train"].columns) == ("site", "nope")
    with pytest.raises(ValueError, match="nope"):
        HashedLogisticRegression(explicit).fit(log_set)


def test_default_gbdt_categoricals_fall_back_to_the_id_inputs(log_set):
    cfg = BaselineConfig(gbdt_min_data_in_leaf=20)
    assert gbdt_categorical(cfg, log_set.spec) == ("site", "ad")  # none of the simulator's columns is here
    model = GBDT(cfg).fit(log_set)
    assert model.categorical == ["site", "ad"]
    assert _auc(log_set, model) > 0.6
    with pytest.raises(ValueError, match="nope"):
        GBDT(BaselineConfig(gbdt_categorical=("nope",))).fit(log_set)


def test_a_gbdt_left_with_nothing_to_split_is_an_error_not_auc_one_half(tmp_path):
    # before: constant features trained a tree-less model that scored every row alike (AUC 0.5), silently
    folder = write_log_set(tmp_path / "c", n=600, extra=lambda split, m: {"x": np.zeros(m, np.float32),
                                                                         "site": np.zeros(m, np.int64),
                                                                         "ad": np.zeros(m, np.int64)})
    data = load_training_set(folder, FEATURES, use_embeddings=False)
    with pytest.raises(ValueError, match="gbdt: LightGBM found no split"):
        GBDT(BaselineConfig(gbdt_min_data_in_leaf=20)).fit(data)


def test_historical_ctr_without_any_of_its_columns_is_an_error(log_set):
    with pytest.raises(ValueError, match="historical_ctr: none of its columns"):
        HistoricalCTR(BaselineConfig()).fit(log_set)


def test_the_oracle_world_comes_only_from_the_training_sets_metadata(tmp_path):
    assert oracle_world({"world": None}, tmp_path) is None
    assert oracle_world({}, tmp_path) is None  # no record: no default path
    assert oracle_world({"world": str(tmp_path / "w")}, tmp_path / "set") == tmp_path / "w"
    folder = tmp_path / "world" / "training_sets" / "v1"  # the feature store's layout: its own world
    assert oracle_world({"data_dir": "data/demo"}, folder) == tmp_path / "world"
    assert oracle_world({"data_dir": str(tmp_path / "built")}, tmp_path / "moved") == tmp_path / "built"


def test_train_never_joins_the_default_worlds_oracle_to_a_users_rows(tmp_path, monkeypatch, capsys):
    """`training_set:` pointing at a user's folder, `data` at a world whose truth covers the same impression ids:
    before, the world's oracle was joined by impression_id ("(oracle)" row, AUC about 0.5)."""
    from ranking.train import main

    world = tmp_path / "world"
    (world / "hidden" / "impression_truth").mkdir(parents=True)
    ids = np.arange(10_000, dtype=np.int64)
    pq.write_table(pa.table({"impression_id": ids, "click_prob": np.random.default_rng(0).random(10_000)}),
                   world / "hidden" / "impression_truth" / "part-00000.parquet")
    folder = write_log_set(tmp_path / "user", n=900, extra=lambda split, m: {
        "impression_id": np.arange(m, dtype=np.int64) + {"train": 0, "valid": 2000, "test": 4000}[split]})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert main([f"data={world}", f"training_set={folder}", "models=[base_rate, logistic_regression]",
                 "export_model=null", "plots=false", "features.id_features=[site, ad]", "features.dense_features=[x]",
                 "features.log_features=[]", "features.count_features=none", "bootstrap_samples=0",
                 "baseline=logistic_regression"]) == 0
    printed = capsys.readouterr().out
    assert "(oracle)" in printed and "| (oracle) |" not in printed
    assert "(oracle): the training set's metadata.json records no world" in printed
    assert "gauc_request: no request_id column" in printed


def _auc(data, model):
    from core.metrics import auc

    return auc(data["test"].labels, model.predict(data["test"]))


def test_logistic_regression_chooses_c_on_validation_and_says_when_it_does_not_converge(log_set):
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    model = HashedLogisticRegression(BaselineConfig(lr_c_grid=(0.001, 0.1, 10.0), lr_hash_bits=12)).fit(log_set)
    assert set(model.valid_logloss) == {0.001, 0.1, 10.0}
    assert model.c == min(model.valid_logloss, key=model.valid_logloss.get) and model.converged
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stopped = HashedLogisticRegression(BaselineConfig(lr_max_iter=1, lr_hash_bits=12)).fit(log_set)
    assert not stopped.converged
    assert any(issubclass(w.category, ConvergenceWarning) and "raise baselines.lr_max_iter" in str(w.message)
               for w in caught)
