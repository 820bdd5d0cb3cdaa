"""The SavedModel contract: what an exported pCTR model folder holds, how it is written and how it is read
(docs/design.md, section 7). ranking/serving/export.py is the command line around it.

    path = export_model(model, "exports", "dashclip_two_tower", warmup=test_columns)  # exports/<name>/<version>/
    scores = load_serving_fn(path)(**features)["probability"]

Layout of `<export_dir>/<model_name>/<version>/` (versions are integers that only grow; each is written to a
temporary folder and renamed, never overwritten). export_dir and the folders the readers take may be local paths
or URIs (gs://, s3://, hdfs://: a Dataflow job's model in a bucket), which go through tf.io.gfile; a local path
goes through os as before. On an object store a version is published file by file, saved_model.pb last
(_publish_remote), as no folder rename is atomic there:

    saved_model.pb, variables/          two signatures, both returning probability [B] and logit [B] (float32):
        serving_default    every raw input by name: int64 / string ids [B], float32 dense [B],
                           float32 embeddings [B, embedding_dim]
        serve_tf_example   examples: string [B] of serialized tf.Example protos (tfx-bsl's RunInference takes
                           only signatures with exactly one string input), parsed with
                           ranking.serving.tf_example.parse_spec
    assets.extra/model_info.json        model kind, feature spec, the inputs' dtypes and shapes, the signatures,
                                        the MLflow run, the embedding version and embedding model
    assets.extra/tf_serving_warmup_requests   TFRecord of tensorflow_serving PredictionLog records built from real
                                        rows: one PredictRequest per signature over the same WARMUP_ROWS rows

Vocabularies and normalisation are inside the graph, so `tf.saved_model.load` needs no project code.

What the signatures do with bad input (tests/ranking/serving/test_contract.py checks each):
- serving_default, missing input: TypeError "missing a required argument: '<name>'".
- serving_default, wrong embedding width or rank, or inputs of different batch sizes: InvalidArgumentError from
  the in-graph checks, naming the input ("Shape of tensor product_embedding [2,15] is not compatible with
  expected shape [?,16]").
- serving_default, wrong dtype: the loaded function raises InvalidArgumentError "input #k (zero-based, inputs
  sorted by name) was expected to be a int64 tensor"; its __context__ is the TypeError naming the input.
- serve_tf_example: an example without a feature fails parsing with "Feature: <name> (data type: ...) is
  required"; an embedding list of another length fails parsing naming the key.
- Unseen ids (int or string) are not errors: they map to the OOV buckets inside the graph and score like any
  id never seen in training. NaN in a dense input is replaced by the train mean under nan_policy=impute.
- An empty batch returns empty `probability` and `logit` tensors [0].
Python callers (the online scorer, `python -m ranking.serving.export --verify`) call `check_request(features, inputs)`
first: a plain ValueError naming the input and its expected dtype and shape, before any TensorFlow call.

What the readers do with a bad folder: `read_model_info` and `load_serving_fn` raise ExportError (a ValueError)
naming the folder or file: no saved_model.pb (not a SavedModel, an empty version folder), a SavedModel that does
not load, no such signature, a model_info.json that is missing or not a JSON object with an inputs section, or a
serving_default signature whose inputs (names, dtypes, shapes) differ from model_info.json's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
from tqdm import tqdm

# ranking.tf_legacy_keras first: tensorflow_serving imports TensorFlow, which must start with tf-keras (and quietly)
from ranking.tf_legacy_keras import tf  # isort: skip
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2  # noqa: E402  isort: skip

from core.files import alive, fault_point, read_json_object
from ranking.models import PCTRModel, build_model
from ranking.pipeline import input_signature
from ranking.serving.tf_example import check_columns, encode_examples, parse_spec
from ranking.training_set import FeatureSpec

SIGNATURES = ("serving_default", "serve_tf_example")
OUTPUTS = {"probability": {"dtype": "float32", "shape": [-1]}, "logit": {"dtype": "float32", "shape": [-1]}}
EXAMPLES_INPUT = "examples"
WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_ROWS = 16


class ServingModule(tf.Module):
    """Holds the model's variables and the two signature functions; no optimizer, no training state."""

    def __init__(self, model: PCTRModel):
        super().__init__()
        self.model = model
        spec = model.spec
        signature = {name: input_signature(spec, name) for name in spec.inputs}
        features = parse_spec(signature_description(spec))

        @tf.function(input_signature=[signature])
        def serve(inputs):
            logits = self.model(_checked_shapes(inputs, signature), training=False)  # [B]
            return {"probability": tf.sigmoid(logits), "logit": logits}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
        def serve_tf_example(examples):
            parsed = tf.io.parse_example(examples, features)  # {name: [B] or [B, dim]}, same dtypes as `serve`
            logits = self.model(parsed, training=False)  # [B]
            return {"probability": tf.sigmoid(logits), "logit": logits}

        self.serve = serve
        self.serve_tf_example = serve_tf_example


def _checked_shapes(inputs: dict, signature: dict) -> dict:
    """The inputs with their shapes checked in-graph, so a wrong embedding width or rank, or inputs of different
    batch sizes, fail with an error naming the input. (A loaded signature does not check shapes itself: its
    flat call path passes any shape through to the first op that breaks, whose error names a layer instead.)"""
    names = list(signature)
    batch = tf.shape(inputs[names[0]])[0]
    out = {}
    for name in names:
        expected = signature[name].shape
        x = tf.ensure_shape(inputs[name], expected, name=f"check_{name}")
        tf.debugging.assert_equal(tf.shape(x)[0], batch, message=(
            f"input '{name}' has another batch size than '{names[0]}': every input needs one row per candidate"))
        out[name] = x
    return out


# ---------------------------------------------------------------------------------------------- where exports live
# A local path is a Path and goes through os / shutil, as it always did (the version rename is atomic). A URI
# (gs://, s3://, hdfs://: Dataflow's workers read models from a bucket; ram:// in tests) stays a string and goes
# through tf.io.gfile. Object stores cannot rename a folder atomically: see _publish_remote.


def is_uri(path: str | Path) -> bool:
    """Whether `path` names a file system by scheme (gs://...), which only tf.io.gfile reaches."""
    return "://" in str(path)


def location(path: str | Path) -> Path | str:
    """A local path as a Path, a URI as its string (Path would turn gs://b into gs:/b)."""
    return str(path) if is_uri(path) else Path(path)


def _join(base: Path | str, *parts: str) -> Path | str:
    return base.joinpath(*parts) if isinstance(base, Path) else "/".join([base.rstrip("/"), *parts])


def _is_file(path: Path | str) -> bool:
    return path.is_file() if isinstance(path, Path) else tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def _is_dir(path: Path | str) -> bool:
    return path.is_dir() if isinstance(path, Path) else tf.io.gfile.isdir(path)


def _subfolders(path: Path | str) -> list[str]:
    """Names of the folders directly under `path`."""
    if isinstance(path, Path):
        return [p.name for p in path.iterdir() if p.is_dir()]
    names = (name.rstrip("/") for name in tf.io.gfile.listdir(path))  # object stores end folder names with /
    return [name for name in names if tf.io.gfile.isdir(_join(path, name))]


def resolve_version_dir(path: str | Path) -> Path | str:
    """A version folder as given, or for a model folder `<export_dir>/<model>/` its highest version (what
    TensorFlow Serving serves by default). Unchanged when neither applies: the caller reports what is missing.
    A Path for a local path, the URI string for a remote one (gs://...)."""
    path = location(path)
    if _is_file(_join(path, "saved_model.pb")) or not _is_dir(path):
        return path
    versions = [name for name in _subfolders(path) if name.isdigit() and _is_file(_join(path, name, "saved_model.pb"))]
    return _join(path, max(versions, key=int)) if versions else path


class ExportError(ValueError):
    """A model folder that is not an export of this contract: names the folder or file and what is wrong."""


def read_model_info(model_dir: str | Path) -> dict:
    """assets.extra/model_info.json of an exported version folder (local or a URI); ExportError naming what is
    missing."""
    model_dir = location(model_dir)
    if not _is_dir(model_dir):
        raise ExportError(f"model folder {model_dir} does not exist (expected <export_dir>/<model>/<version>/)")
    if not _is_file(_join(model_dir, "saved_model.pb")):
        raise ExportError(f"{model_dir} is not a SavedModel: no saved_model.pb (pass a version folder, "
                          "e.g. exports/dashclip_two_tower/1)")
    path = _join(model_dir, "assets.extra", "model_info.json")
    if not _is_file(path):
        raise ExportError(f"{path} does not exist: the model's inputs are unknown (export it with "
                          "python -m ranking.serving.export)")
    info = read_json_object(path, ExportError) if isinstance(path, Path) else _read_remote_json(path)
    inputs = info.get("inputs")
    if not isinstance(inputs, dict) or not inputs or not all(
            isinstance(v, dict) and isinstance(v.get("dtype"), str) and isinstance(v.get("shape"), list)
            for v in inputs.values()):
        raise ExportError(f"{path} has no 'inputs' section of {{name: {{dtype, shape}}}}")
    return info


def _read_remote_json(path: str) -> dict:
    """read_json_object through tf.io.gfile: the JSON object at a URI; ExportError naming it otherwise."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            value = json.loads(f.read().decode("utf-8"))
    except (tf.errors.OpError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(value, dict):
        raise ExportError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def next_version(root: Path | str) -> int:
    """1 + the highest integer version folder under root (1 for none)."""
    versions = [int(name) for name in _subfolders(root) if name.isdigit()] if _is_dir(root) else []
    return max(versions, default=0) + 1


def export_model(model: PCTRModel, export_dir: str | Path, model_name: str, extra_assets: dict | None = None,
                 warmup: Mapping[str, np.ndarray] | None = None, progress: bool = False) -> Path | str:
    """Write `<export_dir>/<model_name>/<version>/` and return it (a Path, or the URI for a remote export_dir).

    The model is copied into a fresh instance first, so the SavedModel holds the weights only (no optimizer
    slots). `warmup`: columns of real rows (e.g. the test split's); the first WARMUP_ROWS become the warm-up
    requests. extra_assets go into model_info.json (the MLflow run, the embedding version, ...). progress: a bar
    over the export's steps on stderr.
    """
    root = _join(location(export_dir), model_name)
    version, tmp = _staging(root)
    with tqdm(total=4, desc=f"export {model_name}", unit="step", postfix="copying the weights",
              disable=not progress) as bar:
        clean = build_model(model.kind, model.spec, model.prep, model.net)
        scratch = tmp if isinstance(tmp, Path) else Path(tempfile.mkdtemp(prefix="export-weights-"))
        tf.train.Checkpoint(model=model).write(str(scratch / "weights" / "ckpt"))  # matched by object path
        tf.train.Checkpoint(model=clean).read(str(scratch / "weights" / "ckpt")).expect_partial()
        shutil.rmtree(scratch)
        _check_same_weights(model, clean)
        _next_step(bar, "tracing the signatures")
        module = ServingModule(clean)
        logger, level = tf.get_logger(), tf.get_logger().level
        logger.setLevel("ERROR")  # Keras's "skipping full serialization" notes: this export needs no Keras config
        try:
            tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve,
                                                              "serve_tf_example": module.serve_tf_example})
        finally:
            logger.setLevel(level)
        _next_step(bar, "warm-up requests")
        extra = _join(tmp, "assets.extra")
        _makedirs(extra)
        inputs = signature_description(model.spec)
        info = {"model": model.kind, "model_name": model_name, "feature_spec": model.spec.to_dict(),
                "inputs": inputs,
                "signatures": {"serving_default": {"inputs": inputs, "outputs": OUTPUTS},
                               "serve_tf_example": {"inputs": {EXAMPLES_INPUT: {"dtype": "string", "shape": [-1]}},
                                                    "outputs": OUTPUTS}}}
        if warmup is not None:
            info["warmup_rows"] = write_warmup(_join(extra, WARMUP_FILE), model_name, warmup, inputs)
        _next_step(bar, "model_info.json")
        info.update(extra_assets or {})
        _write_text(_join(extra, "model_info.json"), json.dumps(info, indent=1, default=str))
        final = _publish(tmp, root, version) if isinstance(tmp, Path) else _publish_remote(tmp, root, version)
        _next_step(bar, str(final))
    return final


def _next_step(bar: tqdm, step: str) -> None:
    bar.update()
    bar.set_postfix_str(step)


def _staging(root: Path | str) -> tuple[int, Path | str]:
    """(the next version, a fresh staging folder under root for it), root created where missing."""
    _makedirs(root)
    if isinstance(root, Path):
        remove_dead_staging(root)  # remote: the pid in a staging name may be another machine's, left alone
    version = next_version(root)
    tmp = _join(root, f".tmp-{version}-{os.getpid()}")  # not a number: TensorFlow Serving ignores it
    if isinstance(tmp, Path):
        shutil.rmtree(tmp, ignore_errors=True)
    elif tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    return version, tmp


def _makedirs(path: Path | str) -> None:
    if isinstance(path, Path):
        path.mkdir(parents=True, exist_ok=True)
    else:
        tf.io.gfile.makedirs(path)


def _write_text(path: Path | str, text: str) -> None:
    if isinstance(path, Path):
        path.write_text(text)
    else:
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(text)


def remove_dead_staging(root: Path) -> None:
    """Staging folders (.tmp-<version>-<pid>) that exports killed mid-write left under root: hidden from
    TensorFlow Serving and from version numbering, but each holds a whole SavedModel."""
    for tmp in root.glob(".tmp-*-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def check_finite(model: PCTRModel, columns: Mapping[str, np.ndarray], who: str, rows: str) -> None:
    """ExportError unless the model's weights and its predictions on `columns` (described as `rows`) are finite:
    a diverged training is refused before anything is written (it used to fail deep in the export, saying the
    weights did not copy, after creating the export folder). `who` names the model (an MLflow run)."""
    bad = [w.name for w in model.weights if not np.isfinite(w.numpy()).all()]
    inputs = signature_description(model.spec)
    features = check_request({k: v for k, v in columns.items() if k in inputs}, inputs)
    logits = np.asarray(model({k: tf.constant(v) for k, v in features.items()}, training=False))
    n = int((~np.isfinite(logits)).sum())
    if bad or n:
        raise ExportError(f"{who}: the model's predictions are not finite ({n} of {len(logits)} {rows} score NaN "
                          f"or inf; {len(bad)} weight tensors hold NaN or inf{', e.g. ' + bad[0] if bad else ''}): "
                          f"its training diverged, nothing exported")


def _publish(tmp: Path, root: Path, version: int) -> Path:
    """Rename the finished folder to the next free version under root: a version is never overwritten."""
    while True:
        final = root / str(version)
        fault_point("before-rename", final)
        try:
            os.rename(tmp, final)  # fails if `final` exists and is not empty
        except OSError:
            if not final.exists():
                raise
            version += 1  # another writer took this version meanwhile
            continue
        fault_point("after-rename", final)
        return final


def _publish_remote(tmp: str, root: str, version: int) -> str:
    """_publish for a URI. Object stores rename a folder object by object (a copy each), never at once, so the
    files move one by one into the first version folder that does not exist yet, the top saved_model.pb last:
    a reader that takes a version only once its saved_model.pb is there (resolve_version_dir, TensorFlow
    Serving) never sees a partial one. Two writers that pick the same version at the same moment are not
    excluded as os.rename excludes them locally (a rename never overwrites: the slower one fails)."""
    while tf.io.gfile.exists(_join(root, str(version))):
        version += 1
    final = _join(root, str(version))
    files = [_join(folder, name)[len(tmp):] for folder, _, names in tf.io.gfile.walk(tmp) for name in names]
    files = [f for f in files if _is_file(tmp + f)]  # a prefix listing may make names up (ram://: assets/.extra)
    files.sort(key=lambda f: f == "/saved_model.pb")  # stable: the rest in walk order, then saved_model.pb
    fault_point("before-rename", final)
    for f in files:
        tf.io.gfile.makedirs(final + f.rsplit("/", 1)[0])
        tf.io.gfile.rename(tmp + f, final + f, overwrite=False)
    fault_point("after-rename", final)
    try:  # what is left are folder markers: the version is out, so a store that keeps them fails nothing
        tf.io.gfile.rmtree(tmp)
    except tf.errors.OpError:
        pass
    return final


def _check_same_weights(a: PCTRModel, b: PCTRModel) -> None:
    if len(a.trainable_weights) != len(b.trainable_weights) or not all(
            np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.trainable_weights, b.trainable_weights)):
        raise RuntimeError("export: the weights did not copy into the serving model")


def signature_description(spec: FeatureSpec) -> dict[str, dict]:
    """{input: {dtype, shape}} as the signature declares them."""
    out = {}
    for name in spec.inputs:
        s = input_signature(spec, name)
        out[name] = {"dtype": s.dtype.name, "shape": [-1 if d is None else d for d in s.shape.as_list()]}
    return out


def check_request(features: Mapping[str, np.ndarray], inputs: dict[str, dict]) -> dict[str, np.ndarray]:
    """The request's features checked against the signature's inputs (model_info.json "inputs") and cast to
    the declared dtypes, ready for `serving_default(**{k: tf.constant(v)})`.

    ValueError naming the input and its expected dtype and shape for a missing input, a wrong dtype (a float
    for an int64 id, a number for a string id) or a wrong embedding width; inputs not declared are left out.
    An empty batch (0 rows, embeddings [0, dim]) passes and scores to empty outputs.
    """
    return check_columns(features, inputs)


# ---------------------------------------------------------------------------------------------- warm-up requests


def write_warmup(path: Path, model_name: str, columns: Mapping[str, np.ndarray], inputs: dict[str, dict]) -> int:
    """Write TensorFlow Serving's warm-up file: one PredictionLog per signature over the first WARMUP_ROWS rows
    (serving_default: one TensorProto per input; serve_tf_example: the same rows as tf.Example protos).
    Returns the number of rows."""
    rows = check_columns({name: v[:WARMUP_ROWS] for name, v in columns.items() if name in inputs}, inputs)
    n = len(next(iter(rows.values())))
    if n == 0:
        raise ValueError("warm-up requests need at least one real row; the columns given are empty")
    requests = {"serving_default": {name: tf.make_tensor_proto(values) for name, values in rows.items()},
                "serve_tf_example": {EXAMPLES_INPUT: tf.make_tensor_proto(encode_examples(rows, inputs),
                                                                          dtype=tf.string)}}
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, tensors in requests.items():
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            for name, proto in tensors.items():
                request.inputs[name].CopyFrom(proto)
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return n


def read_warmup(version_dir: str | Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    """The warm-up requests of an export as [(signature name, {input: numpy array})], in file order."""
    path = _join(location(version_dir), "assets.extra", WARMUP_FILE)
    if not (path.exists() if isinstance(path, Path) else tf.io.gfile.exists(path)):
        raise FileNotFoundError(f"{path} does not exist: the export has no warm-up requests")
    out = []
    for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        out.append((request.model_spec.signature_name,
                    {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}))
    return out


# ---------------------------------------------------------------------------------------------- calling it


def load_serving_fn(path: str | Path, signature: str = "serving_default"):
    """One signature function of a SavedModel (serving_default: call it with keyword tensors). ExportError naming
    the folder for one that does not load or lacks the signature, and, where assets.extra/model_info.json says
    what serving_default takes, for a signature whose inputs differ from it (every reader trusts model_info)."""
    path = location(path)
    if not _is_file(_join(path, "saved_model.pb")):
        raise ExportError(f"{path} is not a SavedModel: no saved_model.pb (pass a version folder, "
                          "e.g. exports/dashclip_two_tower/1)")
    try:
        loaded = tf.saved_model.load(str(path))
    except (OSError, ValueError, tf.errors.OpError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"{path}: the SavedModel does not load ({type(err).__name__}: {first})") from None
    if signature not in loaded.signatures:
        raise ExportError(f"{path} has no '{signature}' signature (it has: "
                          f"{', '.join(loaded.signatures) or 'none'})")
    fn = loaded.signatures[signature]
    if signature == "serving_default" and _is_file(_join(path, "assets.extra", "model_info.json")):
        check_signature(fn, read_model_info(path)["inputs"], path)
    return fn


def check_signature(fn, inputs: dict[str, dict], path: str | Path) -> None:
    """ExportError unless the signature `fn` takes exactly `inputs` (model_info.json's), dtypes and shapes too."""
    specs = fn.structured_input_signature[1]
    have = {name: {"dtype": spec.dtype.name, "shape": [-1 if d is None else d for d in spec.shape.as_list()]}
            for name, spec in specs.items()}
    missing, extra = sorted(set(inputs) - set(have)), sorted(set(have) - set(inputs))
    if missing or extra:
        raise ExportError(f"{path}: the serving_default signature's inputs differ from model_info.json: "
                          f"missing {', '.join(missing) or 'none'}; not declared {', '.join(extra) or 'none'}")
    for name, want in sorted(inputs.items()):
        if have[name] != {"dtype": want["dtype"], "shape": list(want["shape"])}:
            raise ExportError(f"{path}: signature input '{name}' is {have[name]['dtype']} {have[name]['shape']}, "
                              f"model_info.json declares {want['dtype']} {want['shape']}")


def _batches(columns: Mapping[str, np.ndarray], spec: FeatureSpec, batch_size: int):
    """The columns in row slices of batch_size, each checked with check_request; at least one (maybe empty)
    batch, so bad columns raise even for zero rows. Embeddings become dense one batch at a time."""
    inputs = signature_description(spec)
    first = spec.inputs[0]
    n = len(columns[first]) if first in columns else 0
    for start in range(0, max(n, 1), batch_size):
        yield check_request({name: v[start:start + batch_size] for name, v in columns.items() if name in inputs},
                            inputs)


def serving_predict(fn, columns: Mapping[str, np.ndarray], spec: FeatureSpec, batch_size: int = 16384) -> np.ndarray:
    """P(click) through a loaded `serving_default` signature for numpy columns (row order kept), float64."""
    out = [fn(**{name: tf.constant(v) for name, v in batch.items()})["probability"].numpy()
           for batch in _batches(columns, spec, batch_size)]
    return np.concatenate(out).astype(np.float64)


def examples_predict(fn, columns: Mapping[str, np.ndarray], spec: FeatureSpec, batch_size: int = 16384) -> np.ndarray:
    """P(click) through a loaded `serve_tf_example` signature: the rows go in as serialized tf.Example protos."""
    inputs = signature_description(spec)
    out = [fn(examples=tf.constant(encode_examples(batch, inputs), dtype=tf.string))["probability"].numpy()
           for batch in _batches(columns, spec, batch_size)]
    return np.concatenate(out).astype(np.float64)
