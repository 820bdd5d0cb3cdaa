"""Batched encoding of whole catalogs and query lists agrees with the model's own encoders, row for row."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from embeddings.data import Catalog
from embeddings.encode import embed_products, embed_queries, product_hidden_all
from embeddings.model import build_model
from embeddings.preprocess import tokenize
from embeddings.pretrained import load_tokenizer
from tests.embeddings.helpers import TINY, TITLES, model_inputs


def _catalog(pixels: torch.Tensor | None) -> Catalog:
    return Catalog(np.arange(len(TITLES)), list(TITLES), np.array(["a", "b", "a"]), None, pixels, [])


def test_embed_products_in_small_batches_equals_encode_product():
    model = build_model(TINY).eval()
    ids, mask, px = model_inputs()
    with torch.no_grad():
        want = model.encode_product(ids, mask, px).numpy()
    got = embed_products(model, _catalog(px), load_tokenizer(TINY), TINY.max_title_len)
    np.testing.assert_allclose(got, want, atol=1e-5)
    model.train()  # the mode comes back as it was
    hidden = product_hidden_all(model, _catalog(px), ids, mask, batch_size=1, rows=np.array([2, 0]))
    assert model.training and hidden.shape == (2, TINY.text_hidden)
    with torch.no_grad():
        model.eval()
        np.testing.assert_allclose(hidden.numpy(), model.product_hidden(ids, mask, px)[[2, 0]].numpy(), atol=1e-5)


def test_title_only_products_need_no_pictures_and_queries_use_the_query_encoder():
    model = build_model(dataclasses.replace(TINY, modalities="text")).eval()
    tok = load_tokenizer(TINY)
    ids, mask = tokenize(tok, TITLES, TINY.max_title_len)
    with torch.no_grad():
        text_feat = model.encode_text(ids, mask)[1].numpy()
        model.query_proj.weight.mul_(-1)  # the query side differs from the title side from here on
        query = model.encode_query(ids, mask).numpy()
    np.testing.assert_allclose(embed_products(model, _catalog(None), tok, TINY.max_title_len), text_feat, atol=1e-5)
    np.testing.assert_allclose(embed_queries(model, TITLES, tok, TINY.max_query_len, batch_size=2), query, atol=1e-5)
    assert embed_queries(model, [], tok, TINY.max_query_len).shape == (0, 16)
