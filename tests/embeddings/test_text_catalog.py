"""A text-only catalog (products: product_id + title; relevance: label only) through the documented commands:
stage 2, precompute (also of tables named on the command line), evaluation with the honest baselines, and the
feature store (build, materialize, training sets). Also: the off-the-shelf encoder is all-MiniLM-L6-v2 as
sentence-transformers reads it, encoders that map different titles to one vector are caught, the stage-2 split is
by query and says so, max_steps finishes a run, keep_best resumes, and missing columns are named."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from core.config import load_config
from embeddings import evaluate, precompute
from embeddings.checkpoint import load_checkpoint
from embeddings.config import EmbeddingConfig, ModelConfig
from embeddings.data import load_catalog, load_queries, load_relevance, make_holdout, stage2_split
from embeddings.encode import embed_products, embed_queries, embed_sentences
from embeddings.model import build_model, mean_pool
from embeddings.pretrained import load_minilm_encoder, load_tokenizer, minilm_max_seq_length
from embeddings.preprocess import tokenize
from embeddings.train import StopTraining, _check_chance
from feature_store.derive import product_attribute_features
from feature_store.schema import SchemaError, read_table, write_table
from tests.conftest import ROOT
from tests.embeddings.helpers import CONFIG, mlflow_runs, run_train
from tests.helpers.tables import rewrite_raw_table

TEXT_CONFIG = ROOT / "experiments" / "configs" / "embeddings" / "text.yaml"
TEXT = ("model.modalities=text", "stage2.exclude_heldout_products=false")  # on the tiny config: a text catalog


@pytest.fixture()
def text_world(tiny_world, tmp_path, monkeypatch):
    """The tiny world as a user's text-only dataset: products = product_id + title, relevance without source, no
    hidden tables; impressions, purchases and world.json (the splits) as they are."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    data = tmp_path / "text"
    shutil.copytree(tiny_world, data, ignore=shutil.ignore_patterns("hidden", "embeddings", "features",
                                                                    "training_sets"))
    products = read_table("products", data / "raw" / "products", columns=["title"]).to_pandas()
    rewrite_raw_table(data, "products", products)
    relevance = read_table("relevance", data / "raw" / "relevance", columns=["label"]).to_pandas()
    rewrite_raw_table(data, "relevance", relevance)
    return data


def _titles(world, n=50) -> list[str]:
    titles = read_table("products", world / "raw" / "products", columns=["title"]).column("title").to_pylist()
    return list(dict.fromkeys(titles))[:n]


def _mean_pairwise_cosine(emb: np.ndarray) -> float:
    sim = emb @ emb.T
    return float(sim[np.triu_indices(len(emb), 1)].mean())


# ------------------------------------------------------------------------------------------------------------
# the encoders: offshelf = the shipped sentence encoder; the text config starts exactly there; collapse is caught


def test_offshelf_is_minilm_read_as_sentence_transformers_reads_it_and_the_text_config_starts_there(tiny_world):
    texts = _titles(tiny_world, 12) + ["diet soda", "a"]
    bert, tokenizer = load_minilm_encoder()
    assert minilm_max_seq_length() == 256 and bert.config.num_hidden_layers == 6
    offshelf = embed_sentences(bert, tokenizer, texts, 256, batch_size=5)  # length-sorted batches, input order back
    ids, mask = tokenize(tokenizer, texts, 256)
    with torch.no_grad():  # sentence-transformers' Pooling(mean) + Normalize, by hand, one batch
        hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        by_hand = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
    np.testing.assert_allclose(offshelf, torch.nn.functional.normalize(by_hand, dim=-1).numpy(), atol=1e-5)
    np.testing.assert_allclose(mean_pool(hidden, mask).numpy(), by_hand.numpy(), atol=1e-6)

    cfg = load_config(EmbeddingConfig, TEXT_CONFIG).model
    model = build_model(cfg)
    model.start_stage2()  # stage 2's starting point: identity projections, mean pooling, all 6 layers
    tok = load_tokenizer(cfg)
    catalog = load_catalog(tiny_world, 32, with_images=False)
    rows = [catalog.titles.index(t) for t in texts[:12]]
    products = embed_products(model, catalog, tok, cfg.max_title_len)[rows]
    np.testing.assert_allclose(products, offshelf[:12], atol=2e-5)
    np.testing.assert_allclose(embed_queries(model, texts, tok, 256), offshelf, atol=2e-5)


def test_an_encoder_that_maps_different_titles_to_one_vector_is_caught(tiny_world):
    titles = _titles(tiny_world)
    assert len(titles) == 50
    bert, tokenizer = load_minilm_encoder()
    assert _mean_pairwise_cosine(embed_sentences(bert, tokenizer, titles, 256)) < 0.9  # offshelf
    text = load_config(EmbeddingConfig, TEXT_CONFIG).model
    old = ModelConfig(modalities="text")  # the old default: MiniLM's first 2 layers, read at the first token
    for cfg, collapsed in ((text, False), (old, True)):
        model = build_model(cfg)
        model.start_stage2()
        ids, mask = tokenize(load_tokenizer(cfg), titles, cfg.max_title_len)
        with torch.no_grad():
            emb = model.encode_product(ids, mask).numpy()
        mean_cos = _mean_pairwise_cosine(emb)
        if collapsed:
            assert mean_cos > 0.99, mean_cos  # what the issue measured (0.99999): this test can see collapse
        else:
            assert mean_cos < 0.9, mean_cos


class _Run:
    def __init__(self, losses, chance):
        self.history = [{"step": i, "contrastive": x, "chance": chance} for i, x in enumerate(losses)]
        self.step = len(losses)


def test_a_loss_still_at_chance_warns_once_at_the_configured_step(capsys):
    with pytest.warns(RuntimeWarning,
                      match=r"after 12 steps the loss is still at chance \(2\.080 vs log\(1 \+ negatives\) = 2\.079\)"):
        _check_chance(_Run([2.08] * 12, np.log(8)), 12)
    assert "WARNING" in capsys.readouterr().out
    _check_chance(_Run([2.08] * 12, np.log(8)), 11)  # not the configured step: nothing
    _check_chance(_Run([2.08] * 12, np.log(8)), 0)  # disabled
    _check_chance(_Run([1.2] * 12, np.log(8)), 12)  # learning: nothing
    assert capsys.readouterr().out == ""


def test_stage2_of_a_collapsed_encoder_warns(text_world):
    minilm_cls = ("model.init=minilm", "model.text_hidden=384", "model.text_heads=12", "model.text_intermediate=1536",
                  "model.text_layers=2", "model.pooling=cls", "model.max_title_len=16")
    with pytest.warns(RuntimeWarning, match="still at chance"):
        assert run_train(text_world, 2, *TEXT, *minilm_cls, "stage2.lr=0", "max_steps=3",
                         "stage2.chance_check_steps=2") == 0


# ------------------------------------------------------------------------------------------------------------
# the commands on a text-only catalog


def test_text_catalog_stage2_precompute_evaluate_and_feature_store(text_world, tmp_path, capsys):
    from feature_store.__main__ import main as feature_store

    assert run_train(text_world, 2, *TEXT, "model.query_tower=shared") == 0  # text.yaml's one tower
    out = capsys.readouterr().out
    assert "stage 2 split by query:" in out and "held out for validation" in out
    ckpt = text_world / "embeddings" / "checkpoints" / "stage2"
    meta = json.loads((ckpt / "model_config.json").read_text())
    assert meta["model_config"]["modalities"] == "text" and meta["split"].startswith("stage 2 split by query")

    assert precompute.main(["--data", str(text_world), "--checkpoint", str(ckpt), "--version", "v1",
                            "--no-progress"]) == 0
    emb = read_table("product_embeddings", text_world / "embeddings" / "v1" / "products", embedding_dim=16)
    assert emb.num_rows == 400 and set(emb.column("event_ts").to_pylist()) == {pd.Timestamp(0, tz="UTC")}

    # new products at serving time: a table named on the command line, written where --out says
    new = pd.DataFrame({"product_id": [900_001, 900_002], "title": ["Sunny Farms Gala Apples 1kg", "cat litter"]})
    write_table("products", new, tmp_path / "new_products")
    assert precompute.main(["--checkpoint", str(ckpt), "--products", str(tmp_path / "new_products"), "--out",
                            str(tmp_path / "serving"), "--no-progress"]) == 0
    served = read_table("product_embeddings", tmp_path / "serving" / "products", embedding_dim=16).to_pandas()
    assert served.product_id.tolist() == [900_001, 900_002] and not (tmp_path / "serving" / "queries").exists()
    model, cfg = load_checkpoint(ckpt)
    with torch.no_grad():
        ids, mask = tokenize(load_tokenizer(cfg), new.title.tolist(), cfg.max_title_len)
        want = model.eval().encode_product(ids, mask).numpy()
    np.testing.assert_allclose(np.stack(served.embedding.to_numpy()), want, atol=1e-6)
    with pytest.raises(SystemExit):
        precompute.main(["--checkpoint", str(ckpt), "--products", str(tmp_path / "new_products")])  # no --out

    assert evaluate.main(["--config", str(ROOT / "experiments" / "configs" / "embeddings" / "tiny.yaml"),
                          "--data", str(text_world), "--encoder", f"stage2={ckpt}", "--no-tsne", *TEXT]) == 0
    table = capsys.readouterr().out.split("labels: labels")[1].splitlines()[2:]
    assert [row.split()[0] for row in table] == ["offshelf", "untrained", "stage2"]
    metrics = json.loads((text_world / "embeddings" / "eval" / "metrics.json").read_text())
    for name in ("offshelf", "untrained", "stage2"):
        assert np.isnan(metrics[name]["aisle_acc"])  # no aisles: no probe
        assert all(np.isfinite(metrics[name][k]) for k in ("relevance_f1", "ndcg_at_10", "cos_auc_2v0")), name
    assert "offshelf/cos_auc_2v0" in mlflow_runs()["tiny/evaluate"].data.metrics

    features = ROOT / "experiments" / "configs" / "features" / "tiny.yaml"
    for command in ("build", "materialize", "training-set"):
        assert feature_store([command, "--data", str(text_world), "--embeddings", "v1", "--config", str(features),
                              "progress=false"]) == 0
    sets = text_world / "training_sets" / "v1"
    train = read_table("training_set", sets / "train", embedding_dim=16).to_pandas()
    assert len(train) > 0
    # absent catalog attributes: the defaults (feature_store/features.py DEFAULTS), the age 0
    assert (train.aisle == "").all() and (train.brand == "").all() and (train.store_id == 0).all()
    assert (train.product_age_days == 0).all()
    assert (train.price == 0).all()
    assert np.abs(np.stack(train.product_embedding.to_numpy())).sum(1).min() > 0  # vectors known from the epoch

    # and the two-tower pCTR model on it, with the documented command
    from ranking.train import main as ranking_train

    ranking = ROOT / "experiments" / "configs" / "ranking" / "tiny.yaml"
    assert ranking_train(["--config", str(ranking), f"data={text_world}", "embedding_version=v1",
                          "models=[dcn, dashclip_two_tower]", "train.epochs=1", "bootstrap_samples=0",
                          f"export_dir={tmp_path / 'exports'}", f"checkpoint_dir={tmp_path / 'ranking'}"]) == 0
    runs = {r.data.tags.get("model"): r for r in mlflow_runs("pctr-ranking").values()}
    two_tower = runs["dashclip_two_tower"]
    assert two_tower.info.status == "FINISHED" and 0.5 < two_tower.data.metrics["test/auc"] < 1


def test_product_attributes_of_a_catalog_without_them_are_the_defaults():
    out = product_attribute_features(pa.table({"product_id": pa.array([3, 1], pa.int64()),
                                               "title": ["b", "a"]})).to_pandas()
    assert out.product_id.tolist() == [1, 3] and (out.event_ts == pd.Timestamp(0, tz="UTC")).all()
    assert out.aisle.tolist() == ["", ""] and out.store_id.tolist() == [0, 0] and out.price.tolist() == [0.0, 0.0]
    assert out.created_us.isna().all()
    some = product_attribute_features(pa.table({"product_id": pa.array([1], pa.int64()), "brand": ["acme"],
                                                "created_ts": pa.array([pd.Timestamp("2024-01-02", tz="UTC")])}))
    assert some.column("brand").to_pylist() == ["acme"] and some.column("created_us").to_pylist() == [
        pd.Timestamp("2024-01-02", tz="UTC").value // 1000]


def test_missing_columns_are_schema_errors_naming_table_and_column(text_world, world):
    with pytest.raises(SchemaError, match=r"column 'image': missing column .*model.modalities=text") as info:
        run_train(text_world, 2, "stage2.init_from=offshelf")  # the multimodal model on a text-only catalog
    assert (info.value.table, info.value.column) == ("products", "image")
    assert "FieldRef" not in str(info.value)
    with pytest.raises(SchemaError, match=r"column 'image': missing column"):
        run_train(text_world, 1)
    # an image-only catalog works for a model that reads pictures only, and is named for one that reads titles
    products = read_table("products", world / "raw" / "products", columns=["image"]).to_pandas()
    rewrite_raw_table(world, "products", products)
    catalog = load_catalog(world, 32, with_titles=False)
    assert catalog.titles == [""] * len(products) and catalog.pixels.shape[0] == len(products)
    with pytest.raises(SchemaError, match=r"column 'title': missing column.*product_input=image") as info:
        load_catalog(world, 32)
    assert info.value.table == "products"


# ------------------------------------------------------------------------------------------------------------
# stage 2's split, length and best checkpoint


def test_the_stage2_split_is_by_query_and_the_demo_split_is_asked_for(tiny_world):
    catalog = load_catalog(tiny_world, 32, with_images=False)
    rel = load_relevance(tiny_world, catalog, load_queries(tiny_world))
    holdout = make_holdout(catalog, rel, tiny_world, 0.2, 0.1, seed=0)
    split = stage2_split(rel, catalog, holdout, 0.2)
    held = rel.query_id.isin(holdout.heldout_queries)
    assert split.valid.equals(rel[held]) and len(split.train) == int((~held).sum())  # nothing else left out
    assert not set(split.train.query_id) & set(split.valid.query_id)
    share = held.mean()
    assert f"{len(split.valid)} of {len(rel)} pairs ({share:.1%})" in split.summary and "neither" not in split.summary
    demo = stage2_split(rel, catalog, holdout, 0.2, exclude_heldout_products=True)
    dropped = len(rel) - len(demo.train) - len(demo.valid)
    assert dropped > 0 and f"; {dropped} pairs" in demo.summary and "exclude_heldout_products" in demo.summary
    assert 0.2 < 1 - len(demo.train) / len(rel) < 0.4  # the demo's 28%, now asked for and printed


def test_max_steps_finishes_the_run(text_world):
    assert run_train(text_world, 2, *TEXT, "max_steps=2") == 0
    ckpt = text_world / "embeddings" / "checkpoints"
    meta = json.loads((ckpt / "stage2" / "model_config.json").read_text())
    assert len(meta["history"]) == 2 and meta["evals"] and not (ckpt / "stage2.state").exists()
    assert mlflow_runs()["tiny/stage2"].info.status == "FINISHED"


def test_keep_best_starts_at_step_0_and_resumes_to_the_same_weights(text_world, tmp_path):
    best = (*TEXT, "stage2.keep_best=true", "stage2.eval_every_steps=1", "stage2.lr=0.01", "max_steps=5",
            "stage2.select_metric=val/ndcg_at_10")
    assert run_train(text_world, 2, *best, f"checkpoints={tmp_path / 'a'}") == 0
    with pytest.raises(StopTraining):
        run_train(text_world, 2, *best, f"checkpoints={tmp_path / 'b'}", "stop_at_step=3")
    assert run_train(text_world, 2, *best, f"checkpoints={tmp_path / 'b'}") == 0
    metas = [json.loads((tmp_path / x / "stage2" / "model_config.json").read_text()) for x in "ab"]
    evals = metas[0]["evals"]
    assert [e["step"] for e in evals] == [0, 1, 2, 3, 4, 5]
    scores = [e["val/ndcg_at_10"] for e in evals]
    assert metas[0]["best_step"] == evals[int(np.argmax(scores))]["step"] == metas[1]["best_step"]
    assert metas[0]["best_metric"]["val/ndcg_at_10"] == max(scores)
    a = load_file(str(tmp_path / "a" / "stage2" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "stage2" / "model.safetensors"))
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-6, err_msg=k)


def test_a_shared_tower_in_both_directions_with_hard_negative_products_trains_and_resumes(text_world, tmp_path):
    shared = (*TEXT, "model.query_tower=shared", "stage2.symmetric=true", "stage2.negative_products=2",
              "stage2.lr=0.01", "max_steps=4")
    assert run_train(text_world, 2, *shared, f"checkpoints={tmp_path / 'a'}") == 0
    with pytest.raises(StopTraining):
        run_train(text_world, 2, *shared, f"checkpoints={tmp_path / 'b'}", "stop_at_step=2")
    assert run_train(text_world, 2, *shared, f"checkpoints={tmp_path / 'b'}") == 0
    meta = json.loads((tmp_path / "a" / "stage2" / "model_config.json").read_text())
    assert meta["model_config"]["query_tower"] == "shared"
    for h in meta["history"]:  # both directions, averaged
        assert h["contrastive"] == pytest.approx((h["pqc"] + h["qpc"]) / 2, rel=1e-5)
    a = load_file(str(tmp_path / "a" / "stage2" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "stage2" / "model.safetensors"))
    assert set(a) == set(b) and not any(k.startswith(("query_encoder.", "query_proj.")) for k in a)  # one tower
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)  # bit for bit
    start = build_model(load_config(EmbeddingConfig, CONFIG, list(shared)).model, seed=0)
    moved = [k for k, v in start.state_dict().items() if k.startswith("text_encoder.") and ".layer." in k
             and not torch.equal(v, a[k])]
    assert moved  # the one tower trained (queries and titles alike)
    model, _ = load_checkpoint(tmp_path / "a" / "stage2")
    ids, mask = tokenize(load_tokenizer(model.cfg), ["gala apples", "lager six pack"], model.cfg.max_query_len)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_query(ids, mask), model.encode_product(ids, mask))
