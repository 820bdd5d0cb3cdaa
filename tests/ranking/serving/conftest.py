"""The serving tests' one trained model: the tiny two-tower model, trained on the synthetic training set with
`python -m ranking.train` (which also writes export version 1) once for the whole package; MLflow's tracking URI
points at its store while the package runs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from tests.helpers.training_sets import make_training_set, numpy_columns

from ranking.config import FeatureConfig
from ranking.serving.export import rebuild_model
from ranking.tf_legacy_keras import tf
from ranking.train import main as train
from ranking.training_set import load_training_set
from tests.conftest import ROOT

MODEL = "dashclip_two_tower"


@dataclass
class Trained:
    client: MlflowClient
    model_run: object  # the model's mlflow.entities.Run
    parent: object  # its parent run
    folder: Path  # the training set
    exports: Path  # the export root that ranking.train wrote version 1 into

    @property
    def version(self) -> Path:
        return self.exports / MODEL / "1"

    @property
    def test_dir(self) -> Path:
        return self.folder / "test"


@pytest.fixture(scope="package")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    folder = make_training_set(root)
    uri = f"sqlite:///{root}/mlflow.db"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        exports = root / "exports"
        assert train(["--config", str(ROOT / "experiments/configs/ranking/tiny.yaml"), f"data={root / 'synth'}",
                      f"export_dir={exports}", f"checkpoint_dir={root / 'ckpt'}", f"models=[{MODEL}]",
                      "plots=false"]) == 0
        client = MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("pctr-ranking").experiment_id])
        model_run = next(r for r in runs if r.data.tags.get("model") == MODEL)
        parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
        assert (exports / MODEL / "1" / "saved_model.pb").is_file()
        yield Trained(client, model_run, parent, folder, exports)


@pytest.fixture(scope="package")
def info(trained) -> dict:
    """model_info.json of version 1."""
    return json.loads((trained.version / "assets.extra" / "model_info.json").read_text())


@pytest.fixture(scope="package")
def inputs(info) -> dict:
    return info["inputs"]


@pytest.fixture(scope="package")
def saved(trained):
    """Version 1 loaded with tf.saved_model.load."""
    return tf.saved_model.load(str(trained.version))


@pytest.fixture(scope="package")
def keras(trained):
    """The Keras model rebuilt from the MLflow run (what the export must agree with)."""
    return rebuild_model(trained.client, trained.model_run)


@pytest.fixture(scope="package")
def data(trained):
    return load_training_set(trained.folder, FeatureConfig())


@pytest.fixture(scope="package")
def test_table(trained) -> pa.Table:
    return pq.read_table(trained.test_dir)


@pytest.fixture(scope="package")
def direct(saved, test_table, inputs) -> np.ndarray:
    """serving_default's probability for every test row, in table order (one call per 1000 rows)."""
    fn = saved.signatures["serving_default"]
    cols = numpy_columns(test_table, inputs)
    out = []
    for start in range(0, test_table.num_rows, 1000):
        feed = {}
        for name, entry in inputs.items():
            v = cols[name][start:start + 1000]
            feed[name] = tf.constant(v if entry["dtype"] == "string" else v.astype(entry["dtype"]))
        out.append(fn(**feed)["probability"].numpy())
    return np.concatenate(out)
