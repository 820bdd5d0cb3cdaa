"""Batch scoring on Beam (`python -m ranking.batch_score`) and the online scorer (`ranking.online.OnlineRanker`)
against direct calls of the exported SavedModel's `serving_default` signature.

One tiny dashclip_two_tower model is trained on the synthetic training set and exported once per module. `.rank`
runs against a fake online store (`FakeOnline`, injected through OnlineRanker's `online=` parameter) that serves
the test split's rows of one request: building a Feast online store here would cost more than the whole module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from tests.helpers.training_sets import make_training_set
from tests.conftest import ROOT

CONFIG = str(ROOT / "experiments" / "configs" / "ranking" / "tiny.yaml")
DIM = 16  # make_training_set's embedding width


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(version folder, test split folder) of a tiny two-tower model trained and exported once."""
    from ranking.train import main

    root = tmp_path_factory.mktemp("serving_scoring")
    make_training_set(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        assert main(["--config", CONFIG, f"data={root / 'synth'}", f"export_dir={root / 'exports'}",
                     f"checkpoint_dir={root / 'ckpt'}", "models=[dashclip_two_tower]"]) == 0
    version = root / "exports" / "dashclip_two_tower" / "1"
    assert (version / "saved_model.pb").is_file()
    return version, root / "synth" / "training_sets" / "synth-v1" / "test"


@pytest.fixture(scope="module")
def test_table(exported) -> pa.Table:
    return pq.read_table(exported[1])


@pytest.fixture(scope="module")
def inputs(exported) -> dict:
    return json.loads((exported[0] / "assets.extra" / "model_info.json").read_text())["inputs"]


def numpy_columns(table: pa.Table, inputs: dict) -> dict[str, np.ndarray]:
    """The model inputs of a table as numpy with the training set's own dtypes (int8 position, int32
    rating_count, str ids, [n, dim] embeddings): written independently of the code under test."""
    out = {}
    for name, entry in inputs.items():
        values = table.column(name).to_pylist()
        out[name] = (np.array(values, np.float32) if len(entry["shape"]) == 2
                     else np.array(values, dtype=object) if entry["dtype"] == "string"
                     else table.column(name).to_numpy())
    return out


@pytest.fixture(scope="module")
def direct(exported, test_table, inputs) -> np.ndarray:
    """serving_default's probability for every test row, in table order (one call per 1000 rows)."""
    from ranking._tf import tf

    fn = tf.saved_model.load(str(exported[0])).signatures["serving_default"]
    cols = numpy_columns(test_table, inputs)
    out = []
    for start in range(0, test_table.num_rows, 1000):
        feed = {}
        for name, entry in inputs.items():
            v = cols[name][start:start + 1000]
            feed[name] = tf.constant(v if entry["dtype"] == "string" else v.astype(entry["dtype"]))
        out.append(fn(**feed)["probability"].numpy())
    return np.concatenate(out)


@pytest.fixture(scope="module")
def ranker(exported):
    from ranking.online import OnlineRanker

    return OnlineRanker(exported[0])


# ------------------------------------------------------------------------------------------------ batch scoring


def test_batch_scores_match_direct_calls_one_per_row(exported, test_table, direct, tmp_path, monkeypatch):
    from apache_beam.runners.portability import prism_runner

    from ranking.batch_score import main

    # No --runner: the pipeline must not go near Prism (Beam's DirectRunner tries to download its binary first).
    prism_calls = []
    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", lambda *a, **k: prism_calls.append(a) or 1 / 0)
    # Two input files (the folder form of --input) and a batch size that leaves a partial last batch.
    half = test_table.num_rows // 2
    (tmp_path / "in").mkdir()
    pq.write_table(test_table.slice(0, half), tmp_path / "in" / "part-0.parquet")
    pq.write_table(test_table.slice(half), tmp_path / "in" / "part-1.parquet")
    out = tmp_path / "out" / "scores.parquet"
    assert main(["--model", str(exported[0]), "--input", str(tmp_path / "in"), "--output", str(out),
                 "--batch-size", "700"]) == 0

    assert prism_calls == []
    scores = pq.read_table(out)
    assert scores.column_names == ["impression_id", "request_id", "user_id", "query_id", "product_id", "ad_id",
                                   "probability"]
    assert scores.num_rows == test_table.num_rows
    ids = test_table.column("impression_id").to_numpy()
    got_ids = scores.column("impression_id").to_numpy()
    assert len(np.unique(got_ids)) == len(got_ids)  # exactly one score per input row
    row = {int(i): k for k, i in enumerate(ids)}
    where = np.array([row[int(i)] for i in got_ids])  # raises KeyError for an id not in the input
    for key in ("request_id", "user_id", "query_id", "product_id", "ad_id"):
        assert np.array_equal(scores.column(key).to_numpy(), test_table.column(key).to_numpy()[where]), key
    prob = scores.column("probability").to_numpy()
    assert prob.dtype == np.float32
    assert np.abs(prob - direct[where]).max() <= 1e-6
    assert prob.std() > 0.01  # real scores, not a constant
    assert sorted(p.name for p in out.parent.iterdir()) == ["scores.parquet"]  # no temporary leftovers


def _write(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _set_width(table: pa.Table, name: str, width: int) -> pa.Table:
    """The embedding column cut (or zero-padded) to another width."""
    values = np.array(table.column(name).to_pylist(), np.float32)
    values = values[:, :width] if width <= values.shape[1] else np.pad(values, ((0, 0), (0, width - DIM)))
    return table.set_column(table.schema.get_field_index(name), name, pa.array(list(values), pa.list_(pa.float32())))


@pytest.mark.parametrize("case, expected", [
    ("no_model", "does not exist"),
    ("no_model_info", "model_info.json"),
    ("missing_feature", "'product_embedding'"),
    ("wrong_width", "'query_embedding'"),
    ("empty", "no rows"),
    ("missing_key", "key column 'basket_id'"),
])
def test_batch_score_errors_name_the_problem(case, expected, exported, test_table, tmp_path, capsys):
    import shutil

    from ranking.batch_score import main

    model, data = exported[0], tmp_path / "in.parquet"
    sample = test_table.slice(0, 50)
    keys = []
    if case == "no_model":
        model = tmp_path / "nowhere" / "1"
    elif case == "no_model_info":
        model = tmp_path / "copy" / "1"
        shutil.copytree(exported[0], model, ignore=shutil.ignore_patterns("assets.extra"))
    elif case == "missing_feature":
        sample = sample.drop_columns(["product_embedding"])
    elif case == "wrong_width":
        sample = _set_width(sample, "query_embedding", DIM - 1)
    elif case == "empty":
        sample = sample.slice(0, 0)
    elif case == "missing_key":
        keys = ["--keys", "impression_id,basket_id"]
    _write(sample, data)
    out = tmp_path / "scores.parquet"
    assert main(["--model", str(model), "--input", str(data), "--output", str(out), *keys]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    if case == "wrong_width":
        assert f"width {DIM}" in err, err
    assert not out.exists()


def test_failed_pipeline_leaves_no_output(exported, test_table, tmp_path):
    """A wrong width the pre-check cannot see (second row group) fails inside the pipeline: no output file and
    no temporary folder are left, and an older output at the same path is untouched."""
    from ranking.batch_score import main

    good = test_table.slice(0, 300)
    bad = _set_width(test_table.slice(300, 300), "history_embedding", DIM + 2)
    data = tmp_path / "in.parquet"
    with pq.ParquetWriter(data, good.schema) as writer:  # row group 0 fine, row group 1 too wide
        writer.write_table(good)
        writer.write_table(bad.cast(good.schema))
    assert pq.ParquetFile(data).metadata.num_row_groups == 2
    out = tmp_path / "out" / "scores.parquet"
    _write(pa.table({"old": [1]}), out)
    with pytest.raises(Exception, match="history_embedding"):
        main(["--model", str(exported[0]), "--input", str(data), "--output", str(out), "--batch-size", "128"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["scores.parquet"]
    assert pq.read_table(out).column_names == ["old"]


# ------------------------------------------------------------------------------------------------ online scoring


def test_score_equals_direct_calls(ranker, test_table, inputs, direct):
    rows = test_table.slice(100, 200)
    got = ranker.score(numpy_columns(rows, inputs))  # int8 / int32 / str columns are cast by the ranker
    assert got.shape == (200,) and got.dtype == np.float32
    assert np.abs(got - direct[100:300]).max() <= 1e-6


def test_score_empty_request_returns_empty(ranker, inputs):
    empty = {name: np.zeros((0, DIM) if len(e["shape"]) == 2 else 0,
                            np.float32 if e["dtype"] == "float32" else np.int64 if e["dtype"] == "int64" else object)
             for name, e in inputs.items()}
    got = ranker.score(empty)
    assert got.shape == (0,) and got.dtype == np.float32


@pytest.mark.parametrize("edit, match", [
    (lambda f: f.pop("query_embedding"), "missing model input 'query_embedding'"),
    (lambda f: f.__setitem__("product_id", f["product_id"].astype(np.float64)), "input 'product_id': expected int64"),
    (lambda f: f.__setitem__("price", f["price"].astype(str)), "input 'price': expected float32"),
    (lambda f: f.__setitem__("brand", np.arange(len(f["brand"]))), "input 'brand': expected string"),
    (lambda f: f.__setitem__("product_embedding", f["product_embedding"][:, :DIM - 1]),
     rf"input 'product_embedding': expected an embedding of shape \[8, {DIM}\]"),
    (lambda f: f.__setitem__("rating", f["rating"][:5]), r"input 'rating': expected shape \[8\]"),
])
def test_score_bad_input_names_it(ranker, test_table, inputs, edit, match):
    features = numpy_columns(test_table.slice(0, 8), inputs)
    edit(features)
    with pytest.raises(ValueError, match=match):
        ranker.score(features)


def test_unknown_ids_score_through_the_oov_buckets(ranker, test_table, inputs):
    """Ids never seen in training are not errors: they share the OOV row, so two different unknown product ids
    (and brands) give the same score, and that score is a probability."""
    features = numpy_columns(test_table.slice(0, 8), inputs)
    known = ranker.score(features)
    seen = set(test_table.column("product_id").to_pylist())
    a, b = 10**9 + 7, 10**9 + 9
    assert a not in seen and b not in seen
    first = ranker.score({**features, "product_id": np.full(8, a), "brand": np.array(["no such brand"] * 8)})
    second = ranker.score({**features, "product_id": np.full(8, b), "brand": np.array(["nor this one"] * 8)})
    assert np.all(np.isfinite(first)) and np.all((first > 0) & (first < 1))
    assert np.allclose(first, second, atol=1e-7)
    assert not np.allclose(first, known, atol=1e-4)  # the ids do matter: the OOV row is not the known rows


class FakeOnline:
    """OnlineFeatures' interface over fixed rows: `get` returns the online columns (no ids) of the candidates."""

    embedding_dim = DIM

    def __init__(self, rows: pa.Table, inputs: dict):
        from feature_store.features import ONLINE_COLUMNS

        cols = numpy_columns(rows, inputs)
        self.by_product = {int(p): i for i, p in enumerate(rows.column("product_id").to_pylist())}
        self.columns = {name: cols[name] for name in ONLINE_COLUMNS if name in cols}
        self.calls = []

    def get(self, user_id, query_id, product_ids, context, ad_ids=None):
        self.calls.append((user_id, query_id, list(product_ids), list(ad_ids)))
        take = np.array([self.by_product[p] for p in product_ids], np.int64)
        return {name: values[take] for name, values in self.columns.items()}


def test_rank_orders_candidates_by_probability(exported, test_table, inputs):
    from ranking.online import OnlineRanker

    request = test_table.filter(pc.equal(test_table.column("request_id"), test_table.column("request_id")[0]))
    products = request.column("product_id").to_pylist()
    if len(set(products)) < len(products):  # a product twice in a request: keep the first (FakeOnline's key)
        keep = sorted({p: i for i, p in reversed(list(enumerate(products)))}.values())
        request = request.take(keep)
        products = request.column("product_id").to_pylist()
    fake = FakeOnline(request, inputs)
    ranker = OnlineRanker(exported[0], online=fake)
    user, query = request.column("user_id")[0].as_py(), request.column("query_id")[0].as_py()
    ads = request.column("ad_id").to_pylist()
    # Reversed candidate order: the ranking must not depend on it.
    context = {"campaign_id": request.column("campaign_id").to_numpy()[::-1],
               "advertiser_id": request.column("advertiser_id").to_numpy()[::-1], "ts": None}
    ranked = ranker.rank(user, query, products[::-1], ads[::-1], context)

    assert fake.calls == [(user, query, products[::-1], ads[::-1])]
    assert list(ranked.columns) == ["product_id", "ad_id", "probability"]
    assert sorted(ranked.product_id) == sorted(products)
    assert np.all(np.diff(ranked.probability.to_numpy()) <= 0)  # descending
    expected = ranker.score(numpy_columns(request, inputs))  # the same rows scored in table order
    by_product = dict(zip(products, expected))
    assert np.abs(ranked.probability.to_numpy() - [by_product[p] for p in ranked.product_id]).max() <= 1e-6
    assert [dict(zip(products, ads))[p] for p in ranked.product_id] == ranked.ad_id.tolist()

    assert ranker.rank(user, query, [], [], {"campaign_id": [], "advertiser_id": []}).empty

    with pytest.raises(ValueError, match="model input 'campaign_id'"):
        ranker.rank(user, query, products, ads, {"advertiser_id": 3})


def test_ranker_rejects_a_store_of_another_embedding_width(exported, test_table, inputs):
    from ranking.online import OnlineRanker

    fake = FakeOnline(test_table.slice(0, 4), inputs)
    fake.embedding_dim = 32
    with pytest.raises(ValueError, match="width 32"):
        OnlineRanker(exported[0], online=fake)


def test_beam_runner_defaults_to_fnapi_and_a_given_runner_is_kept():
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    from ranking.batch_score import pipeline_options

    assert pipeline_options([]).view_as(StandardOptions).runner == "FnApiRunner"
    options = pipeline_options(["--direct_num_workers=2"])
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert options.view_as(DirectOptions).direct_num_workers == 2
    assert pipeline_options(["--runner=FlinkRunner"]).view_as(StandardOptions).runner == "FlinkRunner"
    assert pipeline_options(["--runner", "PrismRunner"]).view_as(StandardOptions).runner == "PrismRunner"
