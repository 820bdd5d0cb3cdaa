"""Hostile model folders against the SavedModel contract's readers (ranking.serving.contract.read_model_info,
load_serving_fn, resolve_version_dir): not a SavedModel, an empty version folder, a saved_model.pb that is not
one, a model_info.json that is not JSON, a signature whose inputs differ from what model_info.json declares. Each is
an ExportError naming the folder or file and the problem."""

from __future__ import annotations

import json
import shutil

import pytest

from ranking.serving.contract import ExportError, load_serving_fn, read_model_info, resolve_version_dir
from ranking.tf_legacy_keras import tf

INPUTS = {"price": {"dtype": "float32", "shape": [-1]}, "user_id": {"dtype": "int64", "shape": [-1]}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A SavedModel whose serving_default takes price (float32 [B]) and user_id (int64 [B]), with model_info.json."""
    folder = tmp_path_factory.mktemp("export") / "m" / "1"
    module = tf.Module()

    @tf.function(input_signature=[{"price": tf.TensorSpec([None], tf.float32, name="price"),
                                   "user_id": tf.TensorSpec([None], tf.int64, name="user_id")}])
    def serve(inputs):
        return {"probability": tf.sigmoid(inputs["price"] + tf.cast(inputs["user_id"], tf.float32))}

    module.serve = serve
    tf.saved_model.save(module, str(folder), signatures={"serving_default": serve})
    _info(folder, INPUTS)
    return folder


def _info(folder, inputs) -> None:
    (folder / "assets.extra").mkdir(exist_ok=True)
    (folder / "assets.extra" / "model_info.json").write_text(json.dumps({"model": "x", "inputs": inputs}))


@pytest.fixture
def copy(saved, tmp_path):
    target = tmp_path / "m" / "1"
    shutil.copytree(saved, target)
    return target


def test_a_matching_export_loads(saved):
    fn = load_serving_fn(saved)
    out = fn(price=tf.constant([0.0]), user_id=tf.constant([0], tf.int64))["probability"].numpy()
    assert out.tolist() == [0.5]
    assert read_model_info(saved)["inputs"] == INPUTS


def test_not_a_savedmodel_and_an_empty_version_folder(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "notes.txt").write_text("hello")
    assert resolve_version_dir(tmp_path / "m") == tmp_path / "m"  # no version with a saved_model.pb
    for folder in (tmp_path / "m", tmp_path / "m" / "1"):
        message = (f"{folder} is not a SavedModel: no saved_model.pb (pass a version folder, e.g. "
                   f"exports/dashclip_two_tower/1)")
        with pytest.raises(ExportError) as err:
            read_model_info(folder)
        assert str(err.value) == message
        with pytest.raises(ExportError) as err:
            load_serving_fn(folder)
        assert str(err.value) == message
    with pytest.raises(ExportError, match=r"model folder .*/nope does not exist \(expected "):
        read_model_info(tmp_path / "nope")


def test_a_saved_model_pb_that_is_not_one(copy):
    (copy / "saved_model.pb").write_bytes(b"\x08\x01garbage")
    with pytest.raises(ExportError, match=rf"^{copy}: the SavedModel does not load \("):
        load_serving_fn(copy)


@pytest.mark.parametrize("text, message", [
    ("{oops", "model_info.json: not a readable JSON file ("),
    ("[1]", "model_info.json: expected a JSON object, got list"),
    ('{"inputs": {"price": "float32"}}', "model_info.json has no 'inputs' section of {name: {dtype, shape}}"),
])
def test_a_bad_model_info_is_named(copy, text, message):
    (copy / "assets.extra" / "model_info.json").write_text(text)
    with pytest.raises(ExportError) as err:
        read_model_info(copy)
    assert str(err.value).startswith(f"{copy / 'assets.extra' / 'model_info.json'}") and message in str(err.value)


@pytest.mark.parametrize("inputs, message", [
    ({"price": INPUTS["price"], "store_id": INPUTS["user_id"]},
     "the serving_default signature's inputs differ from model_info.json: missing store_id; not declared user_id"),
    ({"price": INPUTS["price"]},
     "the serving_default signature's inputs differ from model_info.json: missing none; not declared user_id"),
    ({"price": {"dtype": "float32", "shape": [-1, 16]}, "user_id": INPUTS["user_id"]},
     "signature input 'price' is float32 [-1], model_info.json declares float32 [-1, 16]"),
    ({"price": INPUTS["price"], "user_id": {"dtype": "string", "shape": [-1]}},
     "signature input 'user_id' is int64 [-1], model_info.json declares string [-1]"),
])
def test_a_signature_with_other_inputs_than_model_info_is_named(copy, inputs, message):
    _info(copy, inputs)
    with pytest.raises(ExportError) as err:
        load_serving_fn(copy)
    assert str(err.value) == f"{copy}: {message}"


def test_a_missing_signature_is_named(copy):
    with pytest.raises(ExportError, match=rf"^{copy} has no 'serve_tf_example' signature \(it has: "
                                          r"serving_default\)$"):
        load_serving_fn(copy, "serve_tf_example")
