"""DashCLIP train -> evaluate -> precompute on the tiny world, resume after a kill, and bad inputs."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from embeddings import evaluate, precompute, train  # noqa: E402
from feature_store.schema import SchemaError, read_table, write_table  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

CONFIG = str(ROOT / "experiments" / "configs" / "embeddings" / "tiny.yaml")


@pytest.fixture()
def world(tiny_world, tmp_path, monkeypatch):
    """A private copy of the tiny world and a private MLflow store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    shutil.copytree(tiny_world, tmp_path / "tiny")
    return tmp_path / "tiny"


def _train(world, stage, *overrides):
    return train.main(["--stage", str(stage), "--config", CONFIG, "--data", str(world), "--no-progress", *overrides])


def test_train_evaluate_precompute_end_to_end(world, capsys):
    import mlflow

    assert _train(world, 1) == 0 and _train(world, 2) == 0
    ckpt = world / "embeddings" / "checkpoints"
    assert (ckpt / "stage1" / "model.safetensors").is_file() and not (ckpt / "stage1.state").exists()
    assert evaluate.main(["--config", CONFIG, "--data", str(world), "--encoder", f"stage1={ckpt / 'stage1'}",
                          "--encoder", f"stage2={ckpt / 'stage2'}", "--no-tsne"]) == 0
    table = capsys.readouterr().out
    assert "offshelf" in table and "stage2" in table and "cos_auc_2v0" in table
    assert (world / "embeddings" / "eval" / "cosine_by_label.png").stat().st_size > 1000

    assert precompute.main(["--data", str(world), "--checkpoint", str(ckpt / "stage2"), "--version", "v1",
                            "--no-progress"]) == 0
    meta = json.loads((world / "embeddings" / "v1" / "metadata.json").read_text())
    assert meta["embedding_dim"] == 16 and meta["embedding_version"] == "v1"
    products = read_table("products", world / "raw" / "products", columns=["created_ts"]).to_pandas()
    emb = read_table("product_embeddings", world / "embeddings" / "v1" / "products", embedding_dim=16).to_pandas()
    assert len(emb) == len(products) and (emb.product_id.to_numpy() == products.product_id.to_numpy()).all()
    assert (emb.event_ts.to_numpy() == products.created_ts.to_numpy()).all()
    vectors = np.stack(emb.embedding.to_numpy())
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    queries = read_table("query_embeddings", world / "embeddings" / "v1" / "queries", embedding_dim=16)
    assert queries.num_rows == read_table("queries", world / "raw" / "queries").num_rows

    client = mlflow.tracking.MlflowClient()
    exp = client.get_experiment_by_name("dashclip-embeddings")
    runs = client.search_runs([exp.experiment_id])
    assert {r.info.run_name for r in runs} == {"tiny/stage1", "tiny/stage2", "tiny/evaluate"}
    assert all(r.info.status == "FINISHED" for r in runs)
    ev = next(r for r in runs if r.info.run_name == "tiny/evaluate")
    assert {"offshelf/aisle_acc", "stage2/cos_auc_2v0", "stage1/recall_at_10"} <= set(ev.data.metrics)


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(world, tmp_path):
    full = tmp_path / "full"
    _train(world, 1, f"checkpoints={full}")
    killed = tmp_path / "killed"
    with pytest.raises(train.StopTraining, match="stopped at step 4"):
        _train(world, 1, f"checkpoints={killed}", "max_steps=4")
    state = json.loads((killed / "stage1.state" / "model_config.json").read_text())
    assert state["step"] == 4 and not (killed / "stage1").exists()
    _train(world, 1, f"checkpoints={killed}")
    a, b = load_file(str(full / "stage1" / "model.safetensors")), load_file(str(killed / "stage1" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-6, err_msg=k)
    # a state folder of another config is refused rather than silently mixed
    with pytest.raises(train.StopTraining):
        _train(world, 1, f"checkpoints={killed}", "max_steps=2", "stage1.lr=0.01")
    with pytest.raises(ValueError, match="another config"):
        _train(world, 1, f"checkpoints={killed}", "stage1.lr=0.02")


def _rewrite(world, table, df):
    folder = world / "raw" / table
    shutil.rmtree(folder)
    folder.mkdir()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), folder / "part-00000.parquet")


def test_bad_inputs_are_named(world):
    products = read_table("products", world / "raw" / "products").to_pandas()
    relevance = read_table("relevance", world / "raw" / "relevance").to_pandas()
    bad_rel = pd.concat([relevance, relevance.iloc[:1].assign(product_id=999_999)])
    _rewrite(world, "relevance", bad_rel)
    with pytest.raises(ValueError, match="unknown product_id.*product_id=999999"):
        _train(world, 1)
    _rewrite(world, "relevance", relevance)

    broken = products.copy()
    broken.loc[3, "image"] = b"\x89PNG\r\n\x1a\n-not-a-picture"
    _rewrite(world, "products", broken)
    with pytest.raises(ValueError, match=f"product_id {products.product_id[3]}: unreadable image"):
        _train(world, 1)
    from embeddings.data import load_catalog

    catalog = load_catalog(world, 32, skip_corrupt_images=True)
    assert catalog.skipped_images == [int(products.product_id[3])] and len(catalog) == len(products) - 1

    empty = products.copy()
    empty.loc[5, "title"] = ""
    _rewrite(world, "products", empty)
    with pytest.raises(SchemaError, match="title"):
        _train(world, 1)
    _rewrite(world, "products", products)

    _train(world, 1)  # a stage-1 checkpoint of the tiny model, then a stage 2 asking for another architecture
    with pytest.raises(ValueError, match="text_layers=1.*text_layers=2"):
        _train(world, 2, "model.text_layers=2")


def test_embedding_table_of_the_wrong_dimension_is_refused(tmp_path):
    table = pa.table({"product_id": [1, 2], "embedding": [[0.6, 0.8], [1.0, 0.0]], "model_version": ["v", "v"],
                      "event_ts": pa.array([0, 0], pa.timestamp("us", tz="UTC"))})
    write_table("product_embeddings", table, tmp_path, embedding_dim=2)
    with pytest.raises(SchemaError, match="expected embedding_dim 16"):
        read_table("product_embeddings", tmp_path, embedding_dim=16)
