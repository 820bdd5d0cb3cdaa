"""ranking.serving.contract: an export's SavedModel signatures, warm-up requests, versions, request checks.

Most tests read the export that ranking.train wrote for the package's trained model (tests/ranking/serving/conftest.py);
the first exports a model trained in place.
"""

from __future__ import annotations

import re
import subprocess
import uuid

import numpy as np
import pytest
from tensorflow_serving.apis import prediction_log_pb2

from ranking.fit import compile_model, predict
from ranking.models import build_model
from ranking.pipeline import make_dataset
from ranking.serving import contract
from ranking.serving.contract import (WARMUP_ROWS, ExportError, check_request, examples_predict, export_model,
                                      load_serving_fn, read_model_info, read_warmup, resolve_version_dir,
                                      serving_predict)
from ranking.serving.tf_example import encode_examples
from ranking.tf_legacy_keras import tf
from tests.conftest import ROOT

MODEL = "dashclip_two_tower"


def test_savedmodel_round_trip(small_data, small_prep, small_net, small_train, tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = build_model("dashclip_two_tower", small_data.spec, small_prep, small_net)
    compile_model(model, small_train)
    model.fit(make_dataset(small_data["train"], small_data.spec, 256, shuffle=True), epochs=1, verbose=0)
    path = export_model(model, tmp_path / "exports", "dashclip_two_tower")
    assert path == tmp_path / "exports" / "dashclip_two_tower" / "1"
    assert (path / "saved_model.pb").exists() and (path / "assets.extra" / "model_info.json").exists()
    fn = load_serving_fn(path)
    inputs = fn.structured_input_signature[1]
    assert inputs["product_id"].dtype == tf.int64 and inputs["device"].dtype == tf.string
    assert inputs["query_embedding"].shape.as_list() == [None, 16]
    assert set(fn.structured_outputs) == {"probability", "logit"}
    test = small_data["test"]
    np.testing.assert_allclose(serving_predict(fn, test.columns, small_data.spec),
                               predict(model, test, small_data.spec), atol=1e-6)
    # versions only grow, and a model folder means its highest version
    assert export_model(model, tmp_path / "exports", "dashclip_two_tower").name == "2"
    (tmp_path / "exports" / "dashclip_two_tower" / "10-not-a-version").mkdir()
    assert resolve_version_dir(tmp_path / "exports" / "dashclip_two_tower") == path.parent / "2"
    assert resolve_version_dir(path) == path


def test_round_trip_on_test_split_through_both_signatures(info, saved, keras, data):
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


def test_warmup_file_is_prediction_logs_that_replay(trained, saved, keras, data):
    path = trained.version
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


def test_saved_model_cli_lists_both_signatures(trained, info):
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "saved_model_cli"), "show", "--dir", str(trained.version),
                           "--all"],
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


def test_bad_requests_are_named(info, saved, data):
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


def test_export_and_readers_through_a_uri_file_system(keras, saved, info, data):
    """A gs:// export_dir (Dataflow) is reached through tf.io.gfile: TensorFlow's in-memory ram:// file system
    proves that route here. A model folder means its highest version, model_info.json and the warm-up requests
    read back, and the exported graph scores as the local export of the same weights."""
    root = f"ram://exports-{uuid.uuid4().hex}"
    first = export_model(keras, root, MODEL, warmup=data["test"].columns)
    assert first == f"{root}/{MODEL}/1" and isinstance(first, str)
    assert resolve_version_dir(f"{root}/{MODEL}") == first  # (a taken version is skipped: the test below)
    assert resolve_version_dir(first) == first
    assert contract.next_version(f"{root}/{MODEL}") == 2
    assert read_model_info(first)["inputs"] == info["inputs"]
    requests = read_warmup(first)
    assert [name for name, _ in requests] == ["serving_default", "serve_tf_example"]
    test = data["test"].columns
    assert np.array_equal(requests[0][1]["product_id"], test["product_id"][:WARMUP_ROWS])
    remote = serving_predict(load_serving_fn(first), test, data.spec, batch_size=1024)
    local = serving_predict(saved.signatures["serving_default"], test, data.spec, batch_size=1024)
    assert np.array_equal(remote, local)
    with pytest.raises(ExportError, match=f"{root}/{MODEL}/3 does not exist"):
        read_model_info(f"{root}/{MODEL}/3")


def test_remote_publish_moves_saved_model_pb_last(monkeypatch):
    """On an object store a version appears file by file; saved_model.pb, which readers wait for, comes last,
    and a version that exists already is skipped, never written into."""
    root = f"ram://publish-{uuid.uuid4().hex}"
    tmp = f"{root}/.tmp-1-7"
    for f in ("saved_model.pb", "variables/variables.index", "assets.extra/model_info.json", "fingerprint.pb"):
        tf.io.gfile.makedirs(f"{tmp}/{f}".rsplit("/", 1)[0])
        with tf.io.gfile.GFile(f"{tmp}/{f}", "w") as out:
            out.write(f)
    tf.io.gfile.makedirs(f"{root}/1")  # another writer's version 1
    with tf.io.gfile.GFile(f"{root}/1/saved_model.pb", "w") as out:
        out.write("theirs")
    moved = []
    rename = tf.io.gfile.rename
    monkeypatch.setattr(tf.io.gfile, "rename", lambda a, b, overwrite: (moved.append(b), rename(a, b, overwrite)))
    assert contract._publish_remote(tmp, root, 1) == f"{root}/2"
    assert moved[-1] == f"{root}/2/saved_model.pb" and len(moved) == 4
    for f in ("saved_model.pb", "variables/variables.index", "assets.extra/model_info.json", "fingerprint.pb"):
        with tf.io.gfile.GFile(f"{root}/2/{f}") as got:
            assert got.read() == f
    with tf.io.gfile.GFile(f"{root}/1/saved_model.pb") as got:
        assert got.read() == "theirs"
