"""experiments.images: the pictures encode aisle and type, deterministically, and an ambiguous one encodes neither."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.images import SHAPES, TEXTURES, aisle_palette, decode_png, draw_product, encode_png


def _draw(seed: int, shape: str = "circle", texture: str = "solid", clear: bool = True, noise: float = 0.0):
    background, band = aisle_palette(4)
    return draw_product(np.random.default_rng(seed), 32, shape, texture, np.array([0.9, 0.1, 0.1], np.float32),
                        background[1] if clear else None, band[1] if clear else None, noise)


def test_png_round_trip_is_exact_and_deterministic():
    pixels = _draw(0, noise=0.06)
    assert pixels.dtype == np.uint8 and pixels.shape == (32, 32, 3)
    png = encode_png(pixels)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png == encode_png(pixels.copy())
    assert np.array_equal(decode_png(png), pixels)
    assert np.array_equal(_draw(0, noise=0.06), pixels)  # the same generator state, the same picture
    assert not np.array_equal(_draw(1, noise=0.06), pixels)


def test_palette_gives_every_aisle_its_own_background_and_band():
    background, band = aisle_palette(20)
    assert background.shape == band.shape == (20, 3)
    assert ((0 <= background) & (background <= 1)).all() and ((0 <= band) & (band <= 1)).all()
    assert len({tuple(np.round(c, 4)) for c in background}) == 20
    assert len({tuple(np.round(c, 4)) for c in band}) == 20


def test_clear_pictures_show_the_band_and_ambiguous_ones_a_grey_studio():
    clear = _draw(0).astype(int)
    _, band = aisle_palette(4)
    assert np.abs(clear[-1, 0] - np.round(band[1] * 255)).max() <= 1  # the shelf band along the bottom
    grey = _draw(0, clear=False).astype(int)
    corner = grey[0, 0]
    assert np.abs(corner - 0.82 * 255).max() < 0.1 * 255 and np.ptp(corner) < 0.1 * 255  # grey, not coloured


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_and_texture_draws_an_object(shape):
    for texture in TEXTURES:
        above_band = _draw(0, shape, texture)[:28]  # the band takes the bottom 32 // 8 rows
        assert (above_band != above_band[0, 0]).any(axis=-1).sum() > 50, (shape, texture)  # an object was drawn
    with pytest.raises(ValueError, match="unknown shape 'star'"):
        _draw(0, "star")
    with pytest.raises(ValueError, match="unknown texture 'plaid'"):
        _draw(0, "circle", "plaid")
