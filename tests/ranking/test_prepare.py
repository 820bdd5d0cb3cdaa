"""python -m ranking.prepare: splits, train-only vocabularies, log-square buckets, the written folder; and the
end-to-end route: a Criteo-format log with no fake columns -> prepare -> python -m ranking.train."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from core.config import ConfigError
from ranking.loaders import ClickLog, load_criteo
from ranking.prepare import Encoder, PrepareConfig, log_square_bucket, main, prepare, split_rows
from ranking.training_set import load_training_set
from ranking.config import FeatureConfig
from tests.conftest import SHARED_DATA


def criteo_log(path, n=1500, seed=0):
    """A Criteo-format file (label, I1-I13, C1-C26, tab-separated) whose clicks follow I1, C1 and C2."""
    rng = np.random.default_rng(seed)
    lines = []
    for _ in range(n):
        ints = rng.poisson(3.0, 13)
        c1, c2 = rng.integers(0, 8), rng.integers(0, 30)
        logit = -2.0 + 0.3 * ints[0] - 1.2 * (c1 % 2 == 0) + 2.0 * (c2 < 8) - 0.5 * ints[0] * (c1 == 3)
        y = int(rng.random() < 1 / (1 + np.exp(-logit)))
        int_fields = ["" if rng.random() < 0.1 else str(v) for v in ints]
        cats = [f"{c1:08x}", f"{c2:08x}"] + [f"{rng.integers(0, 50):08x}" if rng.random() > 0.2 else ""
                                             for _ in range(24)]
        lines.append("\t".join([str(y)] + int_fields + cats))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_log_square_buckets_follow_the_criteo_winners():
    out = log_square_bucket(np.array([np.nan, -1.0, 0.0, 2.0, 3.0, 10.0, 1000.0]))
    assert out.tolist() == ["missing", "v-1", "v0", "v2", "b1", "b5", "b47"]  # floor(log(x)^2) for x > 2


def test_vocabulary_is_fitted_on_train_with_a_min_count():
    enc = Encoder.fit(np.array(["a", "a", "a", "b", "b", "c"], dtype=object), min_count=2, hash_buckets=0)
    assert enc.vocab == {"a": 1, "b": 2}
    assert enc.transform(np.array(["b", "c", "zz", "a"], dtype=object)).tolist() == [2, 0, 0, 1]
    hashed = Encoder.fit(np.array(["a"], dtype=object), 1, hash_buckets=16)
    codes = hashed.transform(np.array(["a", "b", "a"], dtype=object))
    assert codes[0] == codes[2] and ((codes >= 1) & (codes <= 16)).all()


def _log(n=100, ts=True):
    import pandas as pd

    frame = pd.DataFrame({"click": np.zeros(n, np.int8), "t": np.arange(n)[::-1]})
    return ClickLog(frame, (), (), "t" if ts else "")


def test_ratio_time_and_fold_splits_are_disjoint_and_complete():
    log = _log()
    ratio = split_rows(log, PrepareConfig(input="x", out="y", valid_ratio=0.1, test_ratio=0.2))
    assert [len(ratio[s]) for s in ("train", "valid", "test")] == [70, 10, 20]
    assert sorted(np.concatenate(list(ratio.values())).tolist()) == list(range(100))
    by_time = split_rows(log, PrepareConfig(input="x", out="y", split="time"))
    t = log.frame["t"].to_numpy()
    assert t[by_time["train"]].max() < t[by_time["valid"]].min() <= t[by_time["valid"]].max() < t[by_time["test"]].min()
    folds = [split_rows(log, PrepareConfig(input="x", out="y", folds=5, fold=k))["test"] for k in range(5)]
    assert sorted(np.concatenate(folds).tolist()) == list(range(100))
    with pytest.raises(ConfigError, match="no time column"):
        split_rows(_log(ts=False), PrepareConfig(input="x", out="y", split="time"))


def test_prepare_writes_the_training_set_layout(tmp_path):
    src = criteo_log(tmp_path / "log.txt", n=400)
    out = tmp_path / "sets" / "criteo"
    assert main([f"input={src}", "format=criteo", f"out={out}", "min_count=3"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["world"] is None and meta["embedding_dim"] == 0 and meta["rows"] == {"train": 320, "valid": 40,
                                                                                      "test": 40}
    assert meta["features"]["dense_features"] == [f"I{i}" for i in range(1, 14)]
    assert meta["features"]["id_features"][:2] == ["C1", "C2"] and "I1_bucket" in meta["features"]["id_features"]
    train = pq.read_table(out / "train" / "part-00000.parquet")
    assert train.schema.field("click").type == "int8" and train.schema.field("C1").type == "int64"
    test = pq.read_table(out / "test" / "part-00000.parquet")
    assert test.column("C3").to_numpy().min() == 0  # rare and unseen values share code 0
    data = load_training_set(out, FeatureConfig(id_features=tuple(meta["features"]["id_features"]),
                                                dense_features=tuple(meta["features"]["dense_features"]),
                                                count_features="none", nan_policy="impute"), use_embeddings=False)
    assert len(data["train"]) == 320


def test_end_to_end_a_criteo_log_with_no_fake_columns(tmp_path, monkeypatch, capsys):
    """dcn, logistic_regression, gbdt and base_rate through python -m ranking.train on the prepared log."""
    from ranking.train import main as train_main

    src = criteo_log(tmp_path / "log.txt", n=3000)
    out = tmp_path / "criteo"
    prepare(PrepareConfig(input=str(src), format="criteo", out=str(out)))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    argv = ["--config", str(out / "ranking.yaml"), "models=[base_rate, logistic_regression, gbdt, dcn]",
            "plots=false", "bootstrap_samples=50", "train.epochs=2", "net.deep_layers=[32]", "net.cross_layers=1",
            "net.id_embedding_dim=4", f"checkpoint_dir={tmp_path / 'ckpt'}", "baselines.gbdt_min_data_in_leaf=20"]
    assert train_main(argv) == 0
    printed = capsys.readouterr().out
    comparison = printed.split("AUC gain over")[0]  # the comparison table, before the gains table
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in comparison.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in ("base_rate", "logistic_regression", "gbdt",
                                                                          "dcn")}
    assert float(rows["base_rate"]) == 0.5
    for model in ("logistic_regression", "gbdt", "dcn"):
        assert float(rows[model]) > 0.65, (model, rows)
    assert "| (oracle) |" not in printed
    assert "gauc_request: no request_id column" in printed and "slices product_new/old: no product_id" in printed


@pytest.mark.skipif(not (SHARED_DATA / "wide_resdnn_criteo_avazu").is_dir(), reason="shared data absent")
def test_the_real_criteo_sample_prepares(tmp_path):
    src = SHARED_DATA / "wide_resdnn_criteo_avazu" / "criteo" / "train.csv"
    meta = prepare(PrepareConfig(input=str(src), format="criteo", out=str(tmp_path / "c")))
    assert sum(meta["rows"].values()) == len(load_criteo(src).frame) == 7200
    avazu = SHARED_DATA / "wide_resdnn_criteo_avazu" / "avazu" / "train.csv"
    meta = prepare(PrepareConfig(input=str(avazu), format="avazu", out=str(tmp_path / "a"), split="time"))
    assert meta["rows"]["test"] > 0 and "hour_of_day" in meta["features"]["id_features"]
