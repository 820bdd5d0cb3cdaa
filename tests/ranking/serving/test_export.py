"""Serving export: SavedModel signatures, warm-up requests, versions, the registry, `python -m ranking.export`.

One module-scoped fixture trains the tiny two-tower model on the synthetic training set (ranking.train, which also
writes export version 1); every test reads that run through MLflow's client.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.helpers.training_sets import make_training_set
from tests.conftest import ROOT

MODEL = "dashclip_two_tower"
REGISTERED = f"pctr-{MODEL}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(MlflowClient, model run, parent run, training-set folder, export root with version 1 from ranking.train)."""
    root = tmp_path_factory.mktemp("serving")
    folder = make_training_set(root)
    uri = f"sqlite:///{root}/mlflow.db"
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", uri)
    from mlflow import MlflowClient

    from ranking.train import main

    exports = root / "exports"
    assert main(["--config", str(ROOT / "experiments/configs/ranking/tiny.yaml"), f"data={root / 'synth'}",
                 f"export_dir={exports}", f"checkpoint_dir={root / 'ckpt'}", f"models=[{MODEL}]",
                 "plots=false"]) == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("pctr-ranking")
    runs = client.search_runs([exp.experiment_id])
    model_run = next(r for r in runs if r.data.tags.get("model") == MODEL)
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    yield client, model_run, parent, folder, exports
    patch.undo()


@pytest.fixture(scope="module")
def loaded(trained):
    """(version 1 folder, its model_info.json, the loaded SavedModel, the Keras model rebuilt from the run, data)."""
    from ranking._tf import tf
    from ranking.data import FeatureConfig, load_training_set
    from ranking.export import rebuild_model

    client, run, _, folder, exports = trained
    path = exports / MODEL / "1"
    info = json.loads((path / "assets.extra" / "model_info.json").read_text())
    return path, info, tf.saved_model.load(str(path)), rebuild_model(client, run), \
        load_training_set(folder, FeatureConfig())


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_round_trip_on_test_split_through_both_signatures(loaded):
    from ranking.saved_model import examples_predict, serving_predict
    from ranking.trainer import predict

    path, info, saved, keras, data = loaded
    test = data["test"]
    direct = predict(keras, test, data.spec)
    raw = serving_predict(saved.signatures["serving_default"], test.columns, data.spec, batch_size=1024)
    examples = examples_predict(saved.signatures["serve_tf_example"], test.columns, data.spec, batch_size=1024)
    assert len(raw) == len(examples) == len(test) > 1000
    assert np.max(np.abs(raw - direct)) <= 1e-5
    assert np.max(np.abs(examples - direct)) <= 1e-5
    assert np.array_equal(raw, examples)  # the same float32 values reach the same graph
    assert direct.std() > 0.01  # a trained model, not a constant
    assert info["embedding_version"] == "synth-v1" and info["mlflow_run_id"]
    assert set(info["signatures"]) == {"serving_default", "serve_tf_example"}
    assert info["inputs"]["product_embedding"] == {"dtype": "float32", "shape": [-1, 16]}


def test_warmup_file_is_prediction_logs_that_replay(loaded):
    from tensorflow_serving.apis import prediction_log_pb2

    from ranking._tf import tf
    from ranking.saved_model import WARMUP_ROWS, read_warmup

    path, info, saved, keras, data = loaded
    records = list(tf.data.TFRecordDataset(str(path / "assets.extra" / "tf_serving_warmup_requests")))
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in records]
    assert [log.WhichOneof("log_type") for log in logs] == ["predict_log", "predict_log"]
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == ["serving_default",
                                                                                   "serve_tf_example"]
    assert all(log.predict_log.request.model_spec.name == MODEL for log in logs)
    requests = read_warmup(path)
    raw_inputs = requests[0][1]
    assert set(raw_inputs) == set(data.spec.inputs)
    # real rows: the first test rows, not zeros
    test = data["test"].columns
    assert np.array_equal(raw_inputs["product_id"], test["product_id"][:WARMUP_ROWS])
    assert np.array_equal(raw_inputs["query_embedding"], test["query_embedding"][:WARMUP_ROWS])
    expected = tf.sigmoid(keras({k: tf.constant(v) for k, v in raw_inputs.items()})).numpy()
    for signature, tensors in requests:
        out = saved.signatures[signature](**{k: tf.constant(v) for k, v in tensors.items()})["probability"]
        assert out.shape == (WARMUP_ROWS,)
        assert np.max(np.abs(out.numpy() - expected)) <= 1e-5, signature


def _signature_block(text: str, name: str) -> str:
    match = re.search(rf"signature_def\['{name}'\]:(.*?)Method name is", text, re.S)
    assert match, f"saved_model_cli lists no signature {name}"
    return match.group(1)


def test_saved_model_cli_lists_both_signatures(loaded):
    path, info, *_ = loaded
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "saved_model_cli"), "show", "--dir", str(path), "--all"],
                          capture_output=True, text=True, check=True)
    raw = _signature_block(done.stdout, "serving_default")
    dtypes = {"int64": "DT_INT64", "string": "DT_STRING", "float32": "DT_FLOAT"}
    for name, entry in info["inputs"].items():
        shape = "(-1)" if entry["shape"] == [-1] else f"(-1, {entry['shape'][1]})"
        assert re.search(rf"inputs\['{name}'\] tensor_info:\s+dtype: {dtypes[entry['dtype']]}\s+shape: "
                         rf"{re.escape(shape)}", raw), name
    assert "outputs['probability']" in raw and "outputs['logit']" in raw
    examples = _signature_block(done.stdout, "serve_tf_example")
    assert re.search(r"inputs\['examples'\] tensor_info:\s+dtype: DT_STRING\s+shape: \(-1\)", examples)
    assert examples.count("inputs[") == 1  # exactly one string input: what tfx-bsl's RunInference accepts


def test_export_versions_registry_and_alias(trained, capsys):
    from ranking.export import main

    client, run, _, _, _ = trained
    out = trained[4].parent / "cli_exports"
    assert main(["--run", run.info.run_id, "--out", str(out), "--alias", "champion"]) == 0
    v1 = out / MODEL / "1"
    before = _tree_digest(v1)
    assert str(client.get_model_version_by_alias(REGISTERED, "champion").version) == "1"
    # Export again from the alias: a new version, version 1 untouched.
    assert main(["--run", f"models:/{REGISTERED}@champion", "--out", str(out), "--alias", "challenger"]) == 0
    assert sorted(p.name for p in (out / MODEL).iterdir()) == ["1", "2"]
    assert _tree_digest(v1) == before
    challenger = client.get_model_version_by_alias(REGISTERED, "challenger")
    assert str(challenger.version) == "2" and challenger.run_id == run.info.run_id
    assert challenger.tags["serving_version"] == "2"
    assert challenger.source.endswith(f"serving/{MODEL}/2")
    assert str(client.get_model_version_by_alias(REGISTERED, "champion").version) == "1"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, f"serving/{MODEL}/2")}
    assert f"serving/{MODEL}/2/saved_model.pb" in logged and f"serving/{MODEL}/2/assets.extra" in logged
    assert "registered as pctr-dashclip_two_tower version 2 (alias challenger)" in capsys.readouterr().out
    assert main(["--run", f"models:/{REGISTERED}/1", "--out", str(out)]) == 0  # by version number
    assert (out / MODEL / "3" / "saved_model.pb").exists()
    from ranking.saved_model import resolve_version_dir

    (out / MODEL / "10-not-a-version").mkdir()
    assert resolve_version_dir(out / MODEL) == out / MODEL / "3"  # a model folder means its highest version
    assert resolve_version_dir(v1) == v1


def test_verify_in_a_fresh_process(trained):
    v1 = trained[4] / MODEL / "1"
    done = subprocess.run([sys.executable, "-m", "ranking.export", "--verify", str(v1)], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "project modules loaded there: none" in done.stdout
    diffs = [float(x) for x in re.findall(r"max \|SavedModel - Keras\| = (\S+)", done.stdout)]
    assert len(diffs) == 2 and max(diffs) <= 1e-5
    assert re.search(r"max abs diff \S+ \(tolerance 1e-05\): OK", done.stdout)
    assert "signature_def['serving_default']" in done.stdout and "signature_def['serve_tf_example']" in done.stdout


def test_bad_requests_are_named(loaded):
    from ranking._tf import tf
    from ranking.saved_model import check_request

    path, info, saved, keras, data = loaded
    inputs = info["inputs"]
    rows = data["test"].take(np.arange(4)).columns
    features = {name: np.asarray(rows[name][np.arange(4)]) for name in inputs}
    assert set(check_request(features, inputs)) == set(inputs)

    missing = {k: v for k, v in features.items() if k != "price"}
    with pytest.raises(ValueError, match=r"price \(float32 \[-1\]\)"):
        check_request(missing, inputs)
    with pytest.raises(ValueError, match="'user_id': expected int64 ids, got dtype float64"):
        check_request({**features, "user_id": features["user_id"].astype(np.float64)}, inputs)
    with pytest.raises(ValueError, match="'device': expected string ids"):
        check_request({**features, "device": np.arange(4)}, inputs)
    with pytest.raises(ValueError, match=r"'product_embedding': expected a float32 embedding of width 16 "
                                         r"\(shape \[n, 16\]\), got shape \[4, 15\]"):
        check_request({**features, "product_embedding": np.zeros((4, 15), np.float32)}, inputs)

    fn = saved.signatures["serving_default"]
    feed = {k: tf.constant(v) for k, v in check_request(features, inputs).items()}
    # The raw signature's own errors name the input too.
    with pytest.raises(TypeError, match="missing a required argument: 'price'"):
        fn(**{k: v for k, v in feed.items() if k != "price"})
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"product_embedding \[4,15\] is not compatible"):
        fn(**{**feed, "product_embedding": tf.zeros([4, 15])})
    from ranking.examples import encode_examples

    without_price = encode_examples(features, {k: v for k, v in inputs.items() if k != "price"})
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Feature: price \(data type: float\) is required"):
        saved.signatures["serve_tf_example"](examples=tf.constant(without_price))

    # Unseen ids go to the OOV buckets: a score, no error.
    unseen = {**feed, "product_id": tf.constant([10**12] * 4, tf.int64),
              "brand": tf.constant([b"a brand never seen"] * 4)}
    p = fn(**unseen)["probability"].numpy()
    assert p.shape == (4,) and np.all((p > 0) & (p < 1))
    assert not np.allclose(p, fn(**feed)["probability"].numpy())  # the OOV rows are not the seen ids' rows

    # An empty batch gives empty outputs, through both signatures.
    empty = check_request({k: v[:0] for k, v in features.items()}, inputs)
    out = fn(**{k: tf.constant(v) for k, v in empty.items()})
    assert out["probability"].shape == (0,) and out["logit"].shape == (0,)
    out = saved.signatures["serve_tf_example"](examples=tf.constant([], tf.string))
    assert out["probability"].shape == (0,)


def test_encode_examples_round_trip_and_errors(loaded):
    from ranking._tf import tf
    from ranking.data import Embeddings
    from ranking.examples import encode_examples, parse_spec

    _, info, _, _, data = loaded
    inputs = info["inputs"]
    columns = data["test"].take(np.arange(50)).columns
    assert isinstance(columns["product_embedding"], Embeddings)  # the dedup'd form is accepted as is
    examples = encode_examples(columns, inputs)
    assert len(examples) == 50
    parsed = tf.io.parse_example(examples, parse_spec(inputs))
    for name in inputs:
        assert np.array_equal(parsed[name].numpy(), np.asarray(columns[name][np.arange(50)])), name
    assert encode_examples({k: v[:0] for k, v in columns.items()}, inputs) == []

    with pytest.raises(ValueError, match=r"missing column\(s\) for the model inputs: rating \(float32"):
        encode_examples({k: v for k, v in columns.items() if k != "rating"}, inputs)
    with pytest.raises(ValueError, match="'position': expected int64 ids, got dtype float32"):
        encode_examples({**columns, "position": np.zeros(50, np.float32)}, inputs)
    with pytest.raises(ValueError, match="'history_embedding': expected a float32 embedding of width 16"):
        encode_examples({**columns, "history_embedding": np.zeros((50, 8), np.float32)}, inputs)
    with pytest.raises(ValueError, match="'rating' has 49 rows"):
        encode_examples({**columns, "rating": np.zeros(49, np.float32)}, inputs)


def test_cli_errors_are_one_clear_line(trained, tmp_path, capsys):
    from ranking.export import main

    _, _, parent, _, _ = trained
    cases = [
        (["--run", "0123456789abcdef0123456789abcdef", "--out", str(tmp_path)], "no such MLflow run"),
        (["--run", parent.info.run_id, "--out", str(tmp_path)], f"has no `checkpoint` tag.*{MODEL}: "),
        (["--run", f"models:/{REGISTERED}@nobody", "--out", str(tmp_path)], "not in the model registry"),
        (["--verify", str(tmp_path / "absent" / "1")], "is not an export of ranking.saved_model"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert re.search(message, err), err
        assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written by the failed exports
