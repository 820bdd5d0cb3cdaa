"""MLflow set-up shared by the entry points: the project's local store unless MLFLOW_TRACKING_URI says otherwise.

The default store is `sqlite:///mlruns/mlflow.db` with artifacts in `mlruns/artifacts/` (MLflow 3.13+ refuses the
old file store). `mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` shows the runs.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


def setup_mlflow(experiment: str):
    """Point MLflow at the store and return the experiment id, creating the experiment with its artifacts
    beside a SQLite database (so a test's temporary store keeps its artifacts in its temporary folder)."""
    import mlflow

    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        mlflow.set_experiment(experiment)
        return found.experiment_id
    artifacts = None
    if uri.startswith("sqlite:///"):
        artifacts = (Path(uri[len("sqlite:///"):]).resolve().parent / "artifacts").as_uri()
    experiment_id = mlflow.create_experiment(experiment, artifact_location=artifacts)
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
