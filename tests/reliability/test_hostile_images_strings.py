"""Hostile pictures and texts on the DashCLIP input path (embeddings.preprocess, embeddings.data.load_catalog,
embeddings.encode): non-PNG bytes, truncated PNGs, decompression bombs (refused from the header, before any pixel
is allocated), 1 MB / unicode / empty titles and queries. Bytes either decode to finite pixels or raise ValueError
saying why (DataError naming the product in a catalog); texts always tokenize within max_len."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from embeddings.data import Catalog, DataError, load_catalog
from embeddings.encode import embed_products, embed_queries
from embeddings.model import build_model
from embeddings.preprocess import MAX_IMAGE_PIXELS, decode_image, preprocess_images, tokenize
from embeddings.pretrained import load_tokenizer
from tests.embeddings.helpers import TINY, png
from tests.feature_store.schema.valid_tables import valid_table

TOKENIZER = load_tokenizer(TINY)
HOSTILE = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow])
PNG = png(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb(width: int, height: int) -> bytes:
    """A few dozen bytes of valid PNG structure declaring width x height RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _chunk(b"IEND", b""))


@HOSTILE
@given(st.one_of(st.binary(max_size=200),
                 st.builds(lambda cut: PNG[:cut], st.integers(0, len(PNG))),
                 st.builds(lambda i, b: PNG[:i] + bytes([b]) + PNG[i + 1:], st.integers(0, len(PNG) - 1),
                           st.integers(0, 255)),
                 st.builds(lambda w, h: bomb(w, h), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))))
def test_any_bytes_decode_to_finite_pixels_or_raise_value_error(data):
    try:
        pixels = decode_image(data, 16)
    except ValueError as err:
        assert str(err).startswith(("cannot decode (", "the PNG declares ")), str(err)
        return
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.float32
    assert np.isfinite(pixels).all() and pixels.min() >= 0 and pixels.max() <= 1


def test_a_decompression_bomb_is_refused_from_its_header_before_allocation():
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"^image 0: the PNG declares 50000 x 50000 pixels, over the limit of "
                                             rf"{MAX_IMAGE_PIXELS} \(a decompression bomb, or a picture to "
                                             r"downscale first\)$"):
            preprocess_images([bomb(50000, 50000)], 32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # 7.5 GB if it had been decoded
    # between this limit and PIL's own (89 Mpx, where PIL only warns up to twice that): still refused
    with pytest.raises(ValueError, match=r"the PNG declares 9000 x 9000 pixels"):
        decode_image(bomb(9000, 9000), 32)
    assert MAX_IMAGE_PIXELS < Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("fmt", ["GIF", "JPEG", "BMP"])
def test_other_image_formats_are_not_decoded(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, fmt)
    with pytest.raises(ValueError, match=r"^cannot decode \(UnidentifiedImageError: cannot identify image file"):
        decode_image(buf.getvalue(), 16)


@pytest.mark.parametrize("image, problem", [
    (bomb(50000, 50000), "unreadable image: the PNG declares 50000 x 50000 pixels, over the limit of "
                         f"{MAX_IMAGE_PIXELS} (a decompression bomb, or a picture to downscale first)"),
    (PNG[:60], "unreadable image: cannot decode (OSError: image file is truncated)"),
    (b"GIF89a" + b"\0" * 20, "not a PNG file"),
], ids=["bomb", "truncated", "gif"])
def test_load_catalog_names_the_product_with_a_hostile_picture(tmp_path, image, problem):
    table = valid_table("products", 3)
    images = table.column("image").to_pylist()
    images[1] = image
    table = table.set_column(table.column_names.index("image"), "image", pa.array(images, pa.binary()))
    folder = tmp_path / "products"
    folder.mkdir()
    pq.write_table(table, folder / "part-00000.parquet")  # as a user's file: load_catalog checks the pictures
    with pytest.raises(DataError) as err:
        load_catalog(None, 32, products=folder)
    assert str(err.value).startswith(f"{folder}: product_id 2: {problem}; fix the picture, or set "
                                     f"skip_corrupt_images=true"), str(err.value)
    catalog = load_catalog(None, 32, products=folder, skip_corrupt_images=True)
    assert catalog.skipped_images == [2] and catalog.product_ids.tolist() == [1, 3]


HOSTILE_TEXT = st.one_of(st.text(max_size=40), st.just(""), st.just(" \t\n"), st.just("\x00" * 50),
                         st.just("é😀中文\u200b" * 20), st.just("x" * 1_000_000), st.just("milk " * 200_000))


@settings(HOSTILE, max_examples=60)
@given(st.lists(HOSTILE_TEXT, min_size=1, max_size=4))
def test_any_texts_tokenize_within_max_len(texts):
    ids, mask = tokenize(TOKENIZER, texts, TINY.max_title_len)
    assert ids.shape == mask.shape and ids.shape[0] == len(texts) and ids.shape[1] <= TINY.max_title_len
    assert (mask.sum(1) >= 2).all()  # [CLS] and [SEP] at least, even for an empty text


def test_a_1mb_title_tokenizes_as_its_beginning():
    tok = TOKENIZER
    long = "fresh milk 1l " * 80_000  # 1.1 MB
    ids, _ = tokenize(tok, [long, long[:200]], 24)
    assert torch.equal(ids[0], ids[1])
    with pytest.raises(ValueError, match=r"^text 1: expected a string, got NoneType$"):
        tokenize(tok, ["milk", None], 24)


def test_hostile_titles_and_queries_embed_to_finite_unit_vectors():
    model = build_model(TINY).eval()
    tok = TOKENIZER
    texts = ["", "😀中文", "x" * 1_000_000, "\x00", "milk"]
    queries = embed_queries(model, texts, tok, TINY.max_title_len)
    catalog = Catalog(np.arange(len(texts)), texts, None, None,
                      preprocess_images([PNG] * len(texts), TINY.image_size), [])
    products = embed_products(model, catalog, tok, TINY.max_title_len)
    for out in (queries, products):
        assert out.shape == (len(texts), TINY.embed_dim) and np.isfinite(out).all()
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
