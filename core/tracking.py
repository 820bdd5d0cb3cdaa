"""MLflow set-up shared by the entry points: the project's local store unless MLFLOW_TRACKING_URI says otherwise.

The default store is `sqlite:///mlruns/mlflow.db` with artifacts in `mlruns/artifacts/` (MLflow 3.13+ refuses the
old file store). `mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` shows the runs.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from core.files import alive

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
# MLflow 3 opens an experiment without this tag on its GenAI overview (traces, an assistant panel); tagged as model
# development it opens on the runs table, where the comparison is.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# Who runs a run: a RUNNING run whose process is gone was killed (SIGKILL, preemption) and is marked KILLED.
HOST_TAG, PID_TAG = "dashclip.host", "dashclip.pid"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


def setup_mlflow(experiment: str) -> str:
    """Point MLflow at the store and return the experiment id, creating the experiment with its artifacts
    beside a SQLite database (so a test's temporary store keeps its artifacts in its temporary folder), tagged as
    model development."""
    import mlflow  # here, not at the top: the metrics and config users of core never pay for importing MLflow

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
        if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # a store made before the tag existed
            mlflow.MlflowClient().set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    else:
        artifacts = None
        if uri.startswith("sqlite:///"):
            artifacts = (Path(uri[len("sqlite:///"):]).resolve().parent / "artifacts").as_uri()
        experiment_id = mlflow.create_experiment(experiment, artifact_location=artifacts,
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    mlflow.set_experiment(experiment)
    return experiment_id


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """Nested config dict -> {"a.b": value} for mlflow.log_params."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def owner_tags() -> dict[str, str]:
    """Tags naming this process, for end_dead_runs to recognise a run whose process was killed."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def end_dead_runs(experiment_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of the experiment that this host's processes started (owner_tags) and that
    are no longer alive: a SIGKILLed run cannot end its MLflow run, which otherwise stays RUNNING for ever.
    Returns their run ids."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri())
    ended = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        tags = run.data.tags
        pid = tags.get(PID_TAG, "")
        if tags.get(HOST_TAG) == socket.gethostname() and pid.isdigit() and not alive(int(pid)):
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended

