"""DashCLIP train -> evaluate -> precompute on the tiny world, resume after a kill, MLflow runs, and bad inputs."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from tests.helpers.tables import rewrite_raw_table
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


def _train(world, stage, *overrides, out_name=None):
    extra = ["--out-name", out_name] if out_name else []
    return train.main(["--stage", str(stage), "--config", CONFIG, "--data", str(world), "--no-progress", *extra,
                       *overrides])


def _runs():
    import mlflow

    client = mlflow.tracking.MlflowClient()
    exp = client.get_experiment_by_name("dashclip-embeddings")
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def test_train_evaluate_precompute_end_to_end(world, capsys):
    assert _train(world, 1) == 0 and _train(world, 2) == 0
    assert _train(world, 2, "model.product_input=title", out_name="title_only") == 0
    ckpt = world / "embeddings" / "checkpoints"
    assert (ckpt / "stage1" / "model.safetensors").is_file() and not (ckpt / "stage1.state").exists()
    assert evaluate.main(["--config", CONFIG, "--data", str(world), "--encoder", f"stage1={ckpt / 'stage1'}",
                          "--encoder", f"stage2={ckpt / 'stage2'}", "--encoder", f"title_only={ckpt / 'title_only'}",
                          "--no-tsne"]) == 0
    table = capsys.readouterr().out
    assert "offshelf" in table and "title_only" in table and "cos_auc_2v0" in table and "labels: golden" in table
    assert (world / "embeddings" / "eval" / "cosine_by_label.png").stat().st_size > 1000
    metrics = json.loads((world / "embeddings" / "eval" / "metrics.json").read_text())
    for name in ("offshelf", "stage1", "stage2", "title_only"):
        assert set(evaluate.METRICS) <= set(metrics[name]) and all(np.isfinite(list(metrics[name].values())))

    assert precompute.main(["--data", str(world), "--checkpoint", str(ckpt / "stage2"), "--version", "v1",
                            "--no-progress"]) == 0
    out = world / "embeddings" / "v1"
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["embedding_dim"] == 16 and meta["embedding_version"] == "v1" and meta["model"]["embed_dim"] == 16
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temporary folder left behind
    products = read_table("products", world / "raw" / "products", columns=["created_ts"]).to_pandas()
    emb = read_table("product_embeddings", out / "products", embedding_dim=16).to_pandas()
    assert (emb.product_id.to_numpy() == products.product_id.to_numpy()).all()
    assert (emb.event_ts.to_numpy() == products.created_ts.to_numpy()).all() and (emb.model_version == "v1").all()
    np.testing.assert_allclose(np.linalg.norm(np.stack(emb.embedding.to_numpy()), axis=1), 1.0, atol=1e-5)
    queries = read_table("query_embeddings", out / "queries", embedding_dim=16).to_pandas()
    assert len(queries) == read_table("queries", world / "raw" / "queries").num_rows
    imp = read_table("impressions", world / "raw" / "impressions", columns=["query_id", "ts"]).to_pandas()
    first = imp.groupby("query_id").ts.min() - pd.Timedelta(days=1)
    event = queries.set_index("query_id").event_ts
    assert (event.loc[first.index] == first).all()
    assert (event.drop(first.index) == pd.Timestamp(0, tz="UTC")).all()
    # the default version is a hash of the weights: stable for one checkpoint
    assert precompute.main(["--data", str(world), "--checkpoint", str(ckpt / "stage2"), "--no-progress"]) == 0
    assert precompute.default_version(ckpt / "stage2") in {p.name for p in out.parent.iterdir()}

    runs = _runs()
    assert set(runs) == {"tiny/stage1", "tiny/stage2", "tiny/title_only", "tiny/evaluate"}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert {"offshelf/aisle_acc", "stage2/cos_auc_2v0", "stage1/recall_at_10", "title_only/ndcg_at_10"} \
        <= set(runs["tiny/evaluate"].data.metrics)
    assert {"train/itc", "train/itm", "val/aisle_acc"} <= set(runs["tiny/stage1"].data.metrics)
    assert "val/cos_auc_2v0" in runs["tiny/stage2"].data.metrics


@pytest.mark.parametrize("options", [(), ("stage1.momentum=0.9", "stage1.queue_size=48", "stage1.alpha=0.4")],
                         ids=["blip-itc", "momentum-queue-soft-targets"])
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(world, tmp_path, options):
    full, killed = tmp_path / "full", tmp_path / "killed"
    _train(world, 1, f"checkpoints={full}", *options)
    with pytest.raises(train.StopTraining, match="stopped at step 4"):
        _train(world, 1, f"checkpoints={killed}", "max_steps=4", *options)
    state = json.loads((killed / "stage1.state" / "model_config.json").read_text())
    assert state["step"] == 4 and not (killed / "stage1").exists()
    assert _runs()["tiny/stage1"].info.status in ("KILLED", "FINISHED")
    _train(world, 1, f"checkpoints={killed}", *options)
    a, b = load_file(str(full / "stage1" / "model.safetensors")), load_file(str(killed / "stage1" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-6, err_msg=k)
    # a state folder of another config is refused rather than silently mixed
    with pytest.raises(train.StopTraining):
        _train(world, 1, f"checkpoints={killed}", "max_steps=2", "stage1.lr=0.01", *options)
    with pytest.raises(ValueError, match="another config"):
        _train(world, 1, f"checkpoints={killed}", "stage1.lr=0.02", *options)


def test_stage2_resumes_too(world, tmp_path):
    _train(world, 1, f"checkpoints={tmp_path}")
    _train(world, 2, f"checkpoints={tmp_path}", out_name="full")
    with pytest.raises(train.StopTraining, match="stopped at step 3"):
        _train(world, 2, f"checkpoints={tmp_path}", "max_steps=3", out_name="killed")
    _train(world, 2, f"checkpoints={tmp_path}", out_name="killed")
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "killed" / "model.safetensors"))
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-6, err_msg=k)


def test_bad_inputs_are_named_and_the_run_is_marked_failed(world):
    products = read_table("products", world / "raw" / "products").to_pandas()
    relevance = read_table("relevance", world / "raw" / "relevance").to_pandas()
    rewrite_raw_table(world, "relevance", pd.concat([relevance, relevance.iloc[:1].assign(product_id=999_999)]))
    with pytest.raises(ValueError, match="unknown product_id.*product_id=999999"):
        _train(world, 1)
    assert _runs()["tiny/stage1"].info.status == "FAILED"
    rewrite_raw_table(world, "relevance", relevance)

    broken = products.copy()
    broken.loc[3, "image"] = b"\x89PNG\r\n\x1a\n-not-a-picture"
    rewrite_raw_table(world, "products", broken)
    with pytest.raises(ValueError, match=f"product_id {products.product_id[3]}: unreadable image"):
        _train(world, 1)
    assert _train(world, 1, "skip_corrupt_images=true", "checkpoint_every=1000") == 0  # only when asked for

    empty = products.copy()
    empty.loc[5, "title"] = ""
    rewrite_raw_table(world, "products", empty)
    with pytest.raises(ValueError, match=f"product_id {products.product_id[5]}: empty title"):
        _train(world, 1)
    rewrite_raw_table(world, "products", products)

    _train(world, 1)  # a stage-1 checkpoint of the tiny model, then a stage 2 asking for another architecture
    with pytest.raises(ValueError, match="text_layers=1.*text_layers=2"):
        _train(world, 2, "model.text_layers=2")
    with pytest.raises(ValueError, match="text_hidden=32.*text_hidden=48"):
        evaluate.main(["--config", CONFIG, "--data", str(world), "--no-tsne", "model.text_hidden=48",
                       "--encoder", f"stage1={world / 'embeddings' / 'checkpoints' / 'stage1'}"])
    from core.config import ConfigError

    with pytest.raises(ConfigError, match="stage1.lr"):
        _train(world, 1, "stage1.lr=fast")


def test_embedding_table_of_the_wrong_dimension_is_refused(tmp_path):
    table = pa.table({"product_id": [1, 2], "embedding": [[0.6, 0.8], [1.0, 0.0]], "model_version": ["v", "v"],
                      "event_ts": pa.array([0, 0], pa.timestamp("us", tz="UTC"))})
    write_table("product_embeddings", table, tmp_path, embedding_dim=2)
    with pytest.raises(SchemaError, match="embedding.*expected embedding_dim 16"):
        read_table("product_embeddings", tmp_path, embedding_dim=16)
