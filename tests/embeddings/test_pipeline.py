"""DashCLIP train -> evaluate -> precompute on the tiny world through the entry points, MLflow runs, and bad inputs
named by the stage that meets them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from core.config import ConfigError
from embeddings import evaluate, precompute
from feature_store.schema import read_table
from tests.embeddings.helpers import CONFIG, mlflow_runs, run_train
from tests.helpers.tables import rewrite_raw_table


def test_train_evaluate_precompute_end_to_end(world, capsys):
    assert run_train(world, 1) == 0 and run_train(world, 2) == 0
    # the title ablation with one shared tower: stage 1's query encoder is dropped at the hand-over
    assert run_train(world, 2, "model.product_input=title", "model.query_tower=shared", out_name="title_only") == 0
    ckpt = world / "embeddings" / "checkpoints"
    assert (ckpt / "stage1" / "model.safetensors").is_file() and not (ckpt / "stage1.state").exists()
    assert not any(k.startswith("query_encoder.") for k in load_file(str(ckpt / "title_only" / "model.safetensors")))
    assert any(k.startswith("query_encoder.") for k in load_file(str(ckpt / "stage2" / "model.safetensors")))
    assert evaluate.main(["--config", CONFIG, "--data", str(world), "--encoder", f"stage1={ckpt / 'stage1'}",
                          "--encoder", f"stage2={ckpt / 'stage2'}", "--encoder", f"title_only={ckpt / 'title_only'}",
                          "--no-tsne"]) == 0
    table = capsys.readouterr().out
    assert "offshelf" in table and "title_only" in table and "cos_auc_2v0" in table and "labels: golden" in table
    rows = [line.split()[0] for line in table.split("labels: golden")[1].splitlines()[2:]]
    assert rows == ["offshelf", "untrained", "stage1", "stage2", "title_only"]  # the baselines first
    assert (world / "embeddings" / "eval" / "cosine_by_label.png").stat().st_size > 1000
    metrics = json.loads((world / "embeddings" / "eval" / "metrics.json").read_text())
    for name in ("offshelf", "untrained", "stage1", "stage2", "title_only"):
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

    runs = mlflow_runs()
    assert set(runs) == {"tiny/stage1", "tiny/stage2", "tiny/title_only", "tiny/evaluate"}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert {"offshelf/aisle_acc", "stage2/cos_auc_2v0", "stage1/recall_at_10", "title_only/ndcg_at_10"} \
        <= set(runs["tiny/evaluate"].data.metrics)
    assert {"train/itc", "train/itm", "val/aisle_acc"} <= set(runs["tiny/stage1"].data.metrics)
    assert "val/cos_auc_2v0" in runs["tiny/stage2"].data.metrics


def test_bad_inputs_are_named_and_the_run_is_marked_failed(world):
    products = read_table("products", world / "raw" / "products").to_pandas()
    relevance = read_table("relevance", world / "raw" / "relevance").to_pandas()
    rewrite_raw_table(world, "relevance", pd.concat([relevance, relevance.iloc[:1].assign(product_id=999_999)]))
    with pytest.raises(ValueError, match="unknown product_id.*product_id=999999"):
        run_train(world, 1)
    assert mlflow_runs()["tiny/stage1"].info.status == "FAILED"
    rewrite_raw_table(world, "relevance", relevance)

    broken = products.copy()
    broken.loc[3, "image"] = b"\x89PNG\r\n\x1a\n-not-a-picture"
    rewrite_raw_table(world, "products", broken)
    with pytest.raises(ValueError, match=f"product_id {products.product_id[3]}: unreadable image"):
        run_train(world, 1)
    assert run_train(world, 1, "skip_corrupt_images=true", "checkpoint_every=1000") == 0  # only when asked for

    empty = products.copy()
    empty.loc[5, "title"] = ""
    rewrite_raw_table(world, "products", empty)
    with pytest.raises(ValueError, match=f"product_id {products.product_id[5]}: empty title"):
        run_train(world, 1)
    rewrite_raw_table(world, "products", products)

    run_train(world, 1)  # a stage-1 checkpoint of the tiny model, then a stage 2 asking for another architecture
    with pytest.raises(ValueError, match="text_layers=1.*text_layers=2"):
        run_train(world, 2, "model.text_layers=2")
    with pytest.raises(ValueError, match="text_hidden=32.*text_hidden=48"):
        evaluate.main(["--config", CONFIG, "--data", str(world), "--no-tsne", "model.text_hidden=48",
                       "--encoder", f"stage1={world / 'embeddings' / 'checkpoints' / 'stage1'}"])
    with pytest.raises(ConfigError, match="stage1.lr"):
        run_train(world, 1, "stage1.lr=fast")
