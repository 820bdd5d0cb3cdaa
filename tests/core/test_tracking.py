"""core.tracking: the store, the experiment's artifact location and its model-development tag."""

from __future__ import annotations

import mlflow
import pytest

from core import tracking


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path


def test_new_experiment_is_tagged_as_model_development_with_artifacts_beside_the_store(store):
    experiment_id = tracking.setup_mlflow("pctr-ranking")
    experiment = mlflow.MlflowClient().get_experiment(experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location == (store / "artifacts").as_uri()
    assert mlflow.get_experiment_by_name("pctr-ranking").experiment_id == experiment_id


def test_an_untagged_experiment_of_an_older_store_gets_the_tag(store):
    mlflow.set_tracking_uri(tracking.tracking_uri())
    old = mlflow.create_experiment("dashclip-embeddings")
    assert "mlflow.experimentKind" not in mlflow.MlflowClient().get_experiment(old).tags
    assert tracking.setup_mlflow("dashclip-embeddings") == old
    assert mlflow.MlflowClient().get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_flatten_nests_dotted_keys():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2]}) == {"a.b": 1, "a.c.d": "x", "e": [1, 2]}
