"""Export a trained pCTR model for TensorFlow Serving, register it, and verify an export.

    python -m ranking.serving.export --run <run id | models:/<name>@<alias> | models:/<name>/<version>> --out exports
                                     [--alias champion|challenger] [--register-name NAME] [--no-progress]
    python -m ranking.serving.export --verify exports/dashclip_two_tower/3 [--no-progress]

`--run` rebuilds the model of an MLflow model run of `python -m ranking.train` (a child run named after the model:
its `checkpoint` tag is the folder of the final weights, its `model_build.json` artifact holds the kind, feature
spec, network config and preprocessing), writes `<out>/<model kind>/<version>/` with ranking.serving.contract
(versions only grow), logs that folder as the run's artifacts under `serving/<model kind>/<version>`, and
registers it in the MLflow model registry as a new version of `--register-name` (default `pctr-<model kind>`),
with `--alias` pointing at it. The registered version's source is the logged artifact folder, so
`mlflow.artifacts.download_artifacts("models:/pctr-dashclip_two_tower@champion")` fetches the SavedModel.

`--verify` loads the SavedModel in a fresh Python process that imports only TensorFlow (and the TensorFlow
Serving protos to read the warm-up file), replays every warm-up request through its signature, compares the
probabilities with the Keras model rebuilt from the MLflow run named in model_info.json, prints the max abs
difference and `saved_model_cli show --all`, and exits 1 if the difference exceeds 1e-5.

Exit codes: 0 ok, 1 verification failed, 2 bad arguments (unknown run or alias, a run without a checkpoint,
a missing folder): one line on stderr naming the problem. A progress bar on stderr follows the steps of either.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from tqdm import tqdm

from core.tracking import tracking_uri
from ranking.config import NetConfig
from ranking.fit import restore_final
from ranking.models import build_model
from ranking.preprocessing import Preprocessing
from ranking.serving.contract import (EXAMPLES_INPUT, WARMUP_ROWS, ExportError, check_finite, export_model,
                                      read_model_info, read_warmup, resolve_version_dir)
from ranking.serving.tf_example import parse_spec
from ranking.tf_legacy_keras import tf
from ranking.training_set import FeatureSpec, first_rows

TOLERANCE = 1e-5
ALIASES = ("champion", "challenger")


@dataclass
class Exported:
    path: Path  # <out>/<model kind>/<version>
    run_id: str
    registered_name: str | None
    registered_version: str | None


# ---------------------------------------------------------------------------------------------- the MLflow run


def _client() -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri())


def resolve_run(client, ref: str):
    """The MLflow run behind a run id or a registry URI (models:/<name>@<alias>, models:/<name>/<version>)."""
    if ref.startswith("models:/"):
        body = ref[len("models:/"):]
        try:
            if "@" in body:
                name, alias = body.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            elif "/" in body:
                name, number = body.rsplit("/", 1)
                version = client.get_model_version(name, number)
            else:
                raise ExportError(f"--run {ref}: expected models:/<name>@<alias> or models:/<name>/<version>")
        except MlflowException as err:
            raise ExportError(f"--run {ref}: not in the model registry ({err.message})") from None
        if not version.run_id:
            raise ExportError(f"--run {ref}: registered version {version.version} names no MLflow run")
        ref = version.run_id
    try:
        return client.get_run(ref)
    except MlflowException as err:
        raise ExportError(f"--run {ref}: no such MLflow run ({err.message})") from None


def _model_runs_below(client, run) -> list[str]:
    """'<model>: <run id>' for the model runs under a parent run (to point a user who passed the parent)."""
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    return [f"{c.data.tags['model']}: {c.info.run_id}" for c in children if "checkpoint" in c.data.tags]


def rebuild_model(client, run):
    """The trained, calibrated Keras model of a model run: build_model from model_build.json + restore_final."""
    run_id = run.info.run_id
    checkpoint = run.data.tags.get("checkpoint")
    if not checkpoint:
        below = _model_runs_below(client, run)
        hint = f"; its model runs are {', '.join(below)}" if below else ""
        raise ExportError(f"MLflow run {run_id} has no `checkpoint` tag: it is not a neural model run of "
                          f"python -m ranking.train{hint}")
    try:
        build = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/model_build.json")
    except Exception as err:  # noqa: BLE001 - any storage error reads the same to the user
        raise ExportError(f"MLflow run {run_id}: cannot read its model_build.json artifact ({err})") from None
    s = build["feature_spec"]
    spec = FeatureSpec(**{**s, **{k: tuple(s[k]) for k in ("int_ids", "str_ids", "dense", "log_dense", "embeddings")},
                          "ctr_pairs": tuple(tuple(p) for p in s["ctr_pairs"])})
    net = NetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in build["net"].items()})
    p = build["preprocessing"]
    prep = Preprocessing(**{**p, "dense_names": tuple(p["dense_names"])})
    model = build_model(build["kind"], spec, prep, net)
    final = Path(checkpoint)  # <checkpoint_dir>/.../seed<k>/final
    try:
        restore_final(model, final.parent)
    except FileNotFoundError:
        raise ExportError(f"MLflow run {run_id}: its checkpoint {final} does not exist (tag `checkpoint`)") from None
    return model


def _training_set(client, run) -> Path:
    """The training-set folder of a model run (tag `training_set` of its parent run)."""
    parent_id = run.data.tags.get("mlflow.parentRunId")
    tags = client.get_run(parent_id).data.tags if parent_id else run.data.tags
    if "training_set" not in tags:
        raise ExportError(f"MLflow run {run.info.run_id}: its parent run has no `training_set` tag; cannot take "
                          f"real rows for the warm-up requests")
    return Path(tags["training_set"])


def warmup_columns(folder: Path, spec: FeatureSpec, n: int) -> dict[str, np.ndarray]:
    """The first n rows of the training set's test split, as the model's input columns."""
    if not folder.is_dir():
        raise ExportError(f"training set {folder} does not exist: the warm-up requests need its test rows")
    return first_rows(folder, "test", spec, n)


# ---------------------------------------------------------------------------------------------- export


def register(client, name: str, run_id: str, source: str, alias: str | None, tags: dict[str, str]):
    """A new version of registered model `name` (created if new) from `source`; `alias` is moved onto it."""
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="pCTR ranker: TensorFlow SavedModel (ranking.serving.export)")
    version = client.create_model_version(name, source, run_id=run_id, tags=tags)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return version


def export_run(ref: str, out: str | Path, alias: str | None = None, register_name: str | None = None,
               progress: bool = False) -> Exported:
    """Rebuild the model of `ref`, write the next version under `out`, log it on the run and register it.
    progress: a bar over these steps on stderr."""
    client = _client()
    run = resolve_run(client, ref)
    with tqdm(total=4, desc="export", unit="step", postfix="rebuilding the trained model",
              disable=not progress) as bar:
        model = rebuild_model(client, run)
        run_id = run.info.run_id
        folder = _training_set(client, run)
        parent_id = run.data.tags.get("mlflow.parentRunId", "")
        parent_tags = client.get_run(parent_id).data.tags if parent_id else {}
        embedding_model = json.loads(parent_tags.get("embedding_model", "{}") or "{}")
        warmup = warmup_columns(folder, model.spec, WARMUP_ROWS)
        check_finite(model, warmup, f"MLflow run {run_id}", f"warm-up rows of {folder}/test")
        _next_step(bar, "writing the SavedModel")
        path = export_model(model, out, model.kind, warmup=warmup,
                            extra_assets={"mlflow_run_id": run_id, "mlflow_parent_run_id": parent_id,
                                          # the train means the graph fills NaN dense inputs with (batch_score)
                                          "nan_impute": dict(model.prep.impute),
                                          "embedding_version": parent_tags.get("embedding_version", ""),
                                          "embedding_model": embedding_model, "training_set": str(folder)})
        _next_step(bar, "logging it on the MLflow run")
        artifact_path = f"serving/{model.kind}/{path.name}"
        client.log_artifacts(run_id, str(path), artifact_path)
        client.set_tag(run_id, "export_path", str(path.resolve()))
        _next_step(bar, "registering it")
        name = register_name or f"pctr-{model.kind}"
        version = register(client, name, run_id, f"{run.info.artifact_uri}/{artifact_path}", alias,
                           {"export_path": str(path.resolve()), "serving_version": path.name, "model": model.kind})
        _next_step(bar, f"{path}")
    return Exported(path, run_id, name, str(version.version))


def _next_step(bar: tqdm, step: str) -> None:
    bar.update()
    bar.set_postfix_str(step)


# ---------------------------------------------------------------------------------------------- verify

# Runs in a fresh interpreter: TensorFlow and the TensorFlow Serving protos only, no project code.
_REPLAY = r"""
import json, sys
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

loaded = tf.saved_model.load(sys.argv[1])
replies = []
for record in tf.data.TFRecordDataset(sys.argv[1] + "/assets.extra/tf_serving_warmup_requests"):
    request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
    fn = loaded.signatures[request.model_spec.signature_name]
    outputs = fn(**{name: tf.constant(tf.make_ndarray(proto)) for name, proto in request.inputs.items()})
    replies.append({"signature": request.model_spec.signature_name,
                    "probability": outputs["probability"].numpy().tolist(), "logit": outputs["logit"].numpy().tolist()})
project = sorted(m for m in sys.modules if m.split(".")[0] in ("ranking", "feature_store", "embeddings", "experiments"))
print(json.dumps({"replies": replies, "project_modules": project}))
"""


def _saved_model_cli(version_dir: Path) -> str:
    """`saved_model_cli show --all` of the export: the real CLI next to this interpreter."""
    cli = Path(sys.executable).parent / "saved_model_cli"
    cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    done = subprocess.run(cmd + ["show", "--dir", str(version_dir), "--all"], capture_output=True, text=True,
                          env=_quiet_env())
    if done.returncode:
        raise ExportError(f"saved_model_cli show --all failed on {version_dir}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def _quiet_env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def replay_in_fresh_process(version_dir: Path) -> dict:
    """Every warm-up request through the SavedModel in a new interpreter: {"replies": [...], "project_modules"}."""
    with tempfile.TemporaryDirectory() as cwd:  # an empty working directory: nothing of the project on sys.path
        done = subprocess.run([sys.executable, "-c", _REPLAY, str(version_dir.resolve())], capture_output=True,
                              text=True, cwd=cwd, env=_quiet_env())
    if done.returncode:
        raise ExportError(f"loading {version_dir} in a fresh process failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def verify(version_dir: str | Path, progress: bool = False) -> tuple[float, str]:
    """(max abs difference between the SavedModel and the Keras model over the warm-up requests, report text).
    progress: a bar over the steps on stderr."""
    version_dir = resolve_version_dir(version_dir)
    try:
        info = read_model_info(version_dir)
    except ValueError as e:
        raise ExportError(f"{version_dir} is not a ranking export: {e}") from e
    if not info.get("mlflow_run_id"):
        raise ExportError(f"{version_dir}/assets.extra/model_info.json names no mlflow_run_id: cannot rebuild the "
                          f"Keras model to compare with")
    client = _client()
    with tqdm(total=4, desc="verify", unit="step", postfix="rebuilding the Keras model",
              disable=not progress) as bar:
        model = rebuild_model(client, resolve_run(client, info["mlflow_run_id"]))
        _next_step(bar, "replaying the warm-up requests in a fresh process")
        fresh = replay_in_fresh_process(version_dir)
        _next_step(bar, "comparing with the Keras model")
        requests = read_warmup(version_dir)
        lines, worst = [], 0.0
        for (signature, tensors), reply in zip(requests, fresh["replies"], strict=True):
            if signature == "serve_tf_example":  # the Keras model gets the rows the examples hold
                tensors = tf.io.parse_example(tf.constant(tensors[EXAMPLES_INPUT]), parse_spec(info["inputs"]))
            keras = tf.sigmoid(model({k: tf.constant(v) for k, v in tensors.items()}, training=False)).numpy()
            diff = float(np.max(np.abs(np.asarray(reply["probability"], np.float64) - keras))) if len(keras) else 0.0
            worst = max(worst, diff)
            lines.append(f"  {signature}: {len(keras)} rows, max |SavedModel - Keras| = {diff:.2e}")
        _next_step(bar, "saved_model_cli show --all")
        cli = _saved_model_cli(version_dir)
        _next_step(bar, "done")
    report = [f"verify {version_dir}: {len(requests)} warm-up requests replayed in a fresh process "
              f"(project modules loaded there: {', '.join(fresh['project_modules']) or 'none'})", *lines,
              f"max abs diff {worst:.2e} (tolerance {TOLERANCE:.0e}): {'OK' if worst <= TOLERANCE else 'FAILED'}",
              "", "saved_model_cli show --all:", cli]
    return worst, "\n".join(report)


# ---------------------------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ranking.serving.export", description=__doc__.split("\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--run", help="MLflow model run id, models:/<name>@<alias> or models:/<name>/<version>")
    action.add_argument("--verify", metavar="VERSION_DIR",
                        help="an export's <model>/<version> folder to check (a <model> folder: its highest version)")
    parser.add_argument("--out", help="export root (required with --run): writes <out>/<model kind>/<version>/")
    parser.add_argument("--alias", choices=ALIASES, help="registry alias to point at the new version")
    parser.add_argument("--register-name", help="registered model name (default pctr-<model kind>)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one small JSON file per call
    try:
        if args.verify:
            diff, report = verify(args.verify, args.progress)
            print(report)
            return 0 if diff <= TOLERANCE else 1
        if not args.out:
            raise ExportError("--run needs --out <export_dir>")
        done = export_run(args.run, args.out, args.alias, args.register_name, args.progress)
        alias = f" (alias {args.alias})" if args.alias else ""
        print(f"exported run {done.run_id} to {done.path}; registered as {done.registered_name} version "
              f"{done.registered_version}{alias}")
        return 0
    except ExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
