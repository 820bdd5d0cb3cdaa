"""DashCLIP evaluation data (golden labels, retrieval judgments) and its table; the whole entry point runs in
test_pipeline.py."""

from __future__ import annotations

import json
import shutil

import pytest

from core.config import load_config
from embeddings.config import EmbeddingConfig
from embeddings.data import load_catalog
from embeddings.evaluate import METRICS, format_table, load_eval_data, world_judgments
from feature_store.schema import read_table
from tests.embeddings.helpers import CONFIG, save_tiny_blip


def test_world_judgments_agree_with_the_golden_labels(tiny_world):
    cat = load_catalog(tiny_world, 32, with_images=False)
    truth = read_table("relevance_truth", tiny_world / "hidden" / "relevance_truth").to_pandas()
    qids = truth.query_id.unique()[:20]
    judged = world_judgments(tiny_world, cat, qids)
    row_of = {int(p): i for i, p in enumerate(cat.product_ids)}
    for row in truth[truth.query_id.isin(qids)].itertuples():
        assert judged[int(row.query_id)].get(row_of[int(row.product_id)], 0) == row.true_label
    assert world_judgments(tiny_world / "raw", cat, qids) is None  # not a world: no judgments


def test_eval_data_uses_the_golden_labels_and_world_judgments_when_there_are_some(world):
    cfg = load_config(EmbeddingConfig, CONFIG)
    ev = load_eval_data(cfg, world)
    assert (ev.label_source, ev.judgment_source) == ("golden", "world")
    assert set(ev.judgments) == set(ev.relevance.query_id[ev.relevance.query_id.isin(ev.holdout.heldout_queries)])
    assert (ev.relevance.label != ev.relevance.observed).any()  # the labeller's noise is what golden labels undo
    shutil.rmtree(world / "hidden")
    own = load_eval_data(cfg, world)
    assert (own.label_source, own.judgment_source) == ("labels", "labels")
    assert (own.relevance.label == own.relevance.observed).all()
    held = own.relevance[own.relevance.query_id.isin(own.holdout.heldout_queries) & (own.relevance.label > 0)]
    assert sum(len(j) for j in own.judgments.values()) == len(held)  # the labelled pairs only


def test_format_table_has_a_row_per_encoder_and_a_column_per_metric():
    row = dict(zip(METRICS, (0.5, 0.25, 0.125, 1.0, 0.75)))
    lines = format_table({"offshelf": row, "stage2": {**row, "aisle_acc": 0.9, "extra": 3.0}}).splitlines()
    assert lines[0].split() == ["encoder", *METRICS]
    assert lines[1].split() == ["offshelf", "0.5000", "0.2500", "0.1250", "1.0000", "0.7500"]
    assert lines[2].split()[:2] == ["stage2", "0.9000"] and len(lines) == 3


def test_a_hugging_face_blip_directory_gets_its_own_row(world, tmp_path, capsys):
    import dataclasses

    import numpy as np
    import torch

    from embeddings import evaluate
    from embeddings.model import build_model

    blip = tmp_path / "blip"
    save_tiny_blip(blip, image_size=16, seed=5)
    assert evaluate.main(["--config", CONFIG, "--data", str(world), "--blip", str(blip), "--no-tsne"]) == 0
    table = capsys.readouterr().out.split("labels: golden")[1].splitlines()[2:]
    assert [row.split()[0] for row in table] == ["offshelf", "blip", "untrained"]
    metrics = json.loads((world / "embeddings" / "eval" / "metrics.json").read_text())
    assert all(np.isfinite(v) for v in metrics["blip"].values())
    # products by picture through BLIP's own vision_proj at its own image size (16, not the config's 32)
    cfg = load_config(EmbeddingConfig, CONFIG)
    model = evaluate.blip_model(blip, cfg, images=True)
    assert model.product_input == "image" and model.embed_dim == 8
    torch.testing.assert_close(model.product_proj.weight, build_model(dataclasses.replace(
        cfg.model, init=str(blip))).vision_proj.weight)
    ev = evaluate.load_eval_data(cfg, world)
    p_emb = evaluate.blip_product_embeddings(model, world, ev.catalog)
    assert p_emb.shape == (len(ev.catalog), 8)
    np.testing.assert_allclose(np.linalg.norm(p_emb, axis=1), 1.0, atol=1e-5)
    with pytest.raises(SystemExit):
        evaluate.main(["--config", CONFIG, "--data", str(world), "--encoder", f"offshelf={blip}"])
