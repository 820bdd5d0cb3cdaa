"""DashClip, the module: shapes and norms, the query encoder's start, gradients, a text-only catalog, the restart
for stage 2. Tiny configs: the file runs in seconds."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from embeddings.model import build_model
from tests.embeddings.helpers import TINY, TITLES, model_inputs


def _unit_rows(x: torch.Tensor, d: int = 16) -> None:
    assert x.shape == (len(TITLES), d)
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(len(TITLES)))


def test_every_encoder_has_the_documented_shape_and_unit_norm():
    model = build_model(TINY).eval()
    ids, mask, px = model_inputs()
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
    ids, mask, _ = model_inputs()
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
    ids, mask, px = model_inputs()
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
    ids, mask, _ = model_inputs()
    with torch.no_grad():
        product = model.encode_product(ids, mask)
        _unit_rows(product)
        torch.testing.assert_close(product, model.encode_text(ids, mask)[1])  # product_proj starts as text_proj
    with pytest.raises(ValueError, match="pixel_values"):
        build_model(TINY).encode_product(ids, mask)


def test_a_shared_query_tower_encodes_queries_exactly_as_titles():
    ids, mask, _ = model_inputs()
    shared = build_model(dataclasses.replace(TINY, modalities="text", query_tower="shared")).eval()
    separate = build_model(dataclasses.replace(TINY, modalities="text")).eval()
    with torch.no_grad():
        torch.nn.init.normal_(shared.product_proj.weight)  # the two projections differ from now on
        torch.nn.init.normal_(separate.product_proj.weight)
        torch.testing.assert_close(shared.encode_query(ids, mask), shared.encode_product(ids, mask))
        assert not torch.allclose(separate.encode_query(ids, mask), separate.encode_product(ids, mask))
    # title ablation of an image catalog: the title is the product, so a shared tower is allowed
    build_model(dataclasses.replace(TINY, product_input="title", query_tower="shared"))


@pytest.mark.parametrize("product_input, keep, kept", [("multimodal", True, True), ("multimodal", False, False),
                                                       ("title", True, False), ("image", True, False)])
def test_start_stage2_keeps_a_trained_multimodal_product_proj_only_when_asked(product_input, keep, kept):
    model = build_model(dataclasses.replace(TINY, product_input=product_input))
    with torch.no_grad():  # stage 1 trained product_proj and the projections away from each other
        for layer in (model.product_proj, model.text_proj, model.vision_proj):
            layer.weight.add_(torch.randn_like(layer.weight))
    trained = model.product_proj.weight.clone()
    model.start_stage2(keep_product_proj=keep)
    source = model.vision_proj if product_input == "image" else model.text_proj
    want = trained if kept else source.weight
    torch.testing.assert_close(model.product_proj.weight, want, rtol=0, atol=0)
    assert model.product_proj.weight.data_ptr() != source.weight.data_ptr()  # a copy, trained on its own
    torch.testing.assert_close(model.query_proj.weight, model.text_proj.weight, rtol=0, atol=0)


def test_a_shared_query_tower_has_no_query_encoder_and_stage2_builds_or_drops_one_as_asked():
    ids, mask, _ = model_inputs()
    model = build_model(dataclasses.replace(TINY, product_input="title", query_tower="shared")).eval()
    assert model.query_encoder is None and model.query_proj is None
    assert not any(k.startswith("query") for k in model.state_dict())
    # stage 2 of another tower than stage 1's (load_stage2_start sets model.cfg to stage 2's config, then restarts)
    model.cfg = dataclasses.replace(model.cfg, query_tower="separate")
    model.start_stage2()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_query(ids, mask), model.encode_text(ids, mask)[1])
    assert any(k.startswith("query_encoder.") for k in model.state_dict())
    model.cfg = dataclasses.replace(model.cfg, query_tower="shared")
    model.start_stage2()
    assert model.query_encoder is None and not any(k.startswith("query") for k in model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model.encode_query(ids, mask), model.encode_product(ids, mask), rtol=0, atol=0)
