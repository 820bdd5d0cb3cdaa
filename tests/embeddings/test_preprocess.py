"""DashCLIP inputs as the model reads them: token ids of titles and queries, normalised pixel tensors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from embeddings.preprocess import IMAGE_MEAN, IMAGE_STD, preprocess_images, tokenize
from embeddings.pretrained import load_tokenizer
from tests.embeddings.helpers import TINY, png


def test_preprocess_images_normalises_resizes_and_names_a_bad_image():
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    px = preprocess_images([png(red), red, np.full((32, 32, 3), 128, np.uint8)], 32)
    assert px.shape == (3, 3, 32, 32) and px.dtype == torch.float32
    want_red = (torch.tensor([1.0, 0.0, 0.0]) - torch.tensor(IMAGE_MEAN)) / torch.tensor(IMAGE_STD)
    torch.testing.assert_close(px[0, :, 5, 7], want_red)  # channel-first, BLIP mean/std
    torch.testing.assert_close(px[1], px[0])  # bytes and arrays agree
    torch.testing.assert_close(px[2, :, 0, 0], (128 / 255 - torch.tensor(IMAGE_MEAN)) / torch.tensor(IMAGE_STD))
    gray = io.BytesIO()
    Image.fromarray(np.full((8, 8), 255, np.uint8), mode="L").save(gray, format="PNG")
    assert preprocess_images([gray.getvalue()], 32).shape == (1, 3, 32, 32)  # converted to RGB
    with pytest.raises(ValueError, match="image 1: cannot decode"):
        preprocess_images([png(red), b"\x89PNG\r\n\x1a\nbroken"], 32)
    with pytest.raises(ValueError, match="image 2: cannot decode.*uint8"):
        preprocess_images([red, red, red.astype(np.float32)], 32)


def test_tokenize_pads_to_the_longest_text_and_truncates_at_max_len():
    tok = load_tokenizer(TINY)
    ids, mask = tokenize(tok, ["diet soda", "a much longer title with very many words in it"], 24)
    assert ids.shape == mask.shape and ids.shape[0] == 2
    assert mask[1].all() and mask[0].sum() == 4  # [CLS] diet soda [SEP], then padding
    assert ids[0, 0] == tok.cls_token_id and (ids[0, 4:] == tok.pad_token_id).all()
    short, short_mask = tokenize(tok, ["a much longer title with very many words in it"], 5)
    assert short.shape == (1, 5) and short[0, -1] == tok.sep_token_id and short_mask.all()
    torch.testing.assert_close(short[0, :4], ids[1, :4])
