"""Procedural product pictures: small RGB PNGs whose content encodes the product's type and aisle, plus noise.

A clear picture shows the aisle through its background colour and shelf band (neighbouring aisles of one
department get neighbouring hues) and the type through the shape, texture and colour of the object.
An ambiguous picture (a plain box on a grey studio background) shows neither: only the title can tell.
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image

SHAPES = ("circle", "square", "triangle", "diamond", "bottle", "cross")
TEXTURES = ("solid", "hstripes", "vstripes", "dots")


def hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def aisle_palette(n_aisles: int) -> tuple[np.ndarray, np.ndarray]:
    """Background and band colours per aisle, [n_aisles, 3] each in [0, 1]. Aisle order is department-major,
    so evenly spread hues put related aisles next to each other on the colour wheel."""
    hues = np.arange(n_aisles) / n_aisles
    background = np.stack([hsv(h, 0.45, 0.92) for h in hues])
    band = np.stack([hsv(h * 7.0 + 0.5 / n_aisles, 0.9, 0.55) for h in hues])  # a second, permuted cue
    return background, band


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "triangle":
        return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r * 1.1
    if shape == "bottle":
        body = (np.abs(dx) <= r * 0.55) & (dy >= -r * 0.3) & (dy <= r)
        neck = (np.abs(dx) <= r * 0.22) & (dy >= -r) & (dy < -r * 0.3)
        return body | neck
    if shape == "cross":
        return ((np.abs(dy) <= r * 0.3) & (np.abs(dx) <= r)) | ((np.abs(dx) <= r * 0.3) & (np.abs(dy) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, yy: np.ndarray, xx: np.ndarray, phase: int) -> np.ndarray:
    """Multiplicative shading in [0.55, 1] that makes the texture visible on the object."""
    if texture == "solid":
        return np.ones_like(yy, dtype=np.float32)
    if texture == "hstripes":
        return np.where(((yy + phase) // 2) % 2 == 0, 1.0, 0.55).astype(np.float32)
    if texture == "vstripes":
        return np.where(((xx + phase) // 2) % 2 == 0, 1.0, 0.55).astype(np.float32)
    if texture == "dots":
        return np.where(((yy + phase) % 4 < 2) & ((xx + phase) % 4 < 2), 0.55, 1.0).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}")


def draw_product(
    rng: np.random.Generator,
    size: int,
    shape: str,
    texture: str,
    object_rgb: np.ndarray,
    background_rgb: np.ndarray | None,
    band_rgb: np.ndarray | None,
    noise: float,
) -> np.ndarray:
    """One picture as uint8 [size, size, 3]. background_rgb None draws the ambiguous studio shot."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if background_rgb is None:  # ambiguous: grey background, a box in a random colour, random texture
        background = np.full(3, 0.82, np.float32) + rng.normal(0, 0.02, 3).astype(np.float32)
        shape, band_rgb = "square", None
        object_rgb = hsv(rng.random(), 0.6, 0.8)
        texture = TEXTURES[rng.integers(len(TEXTURES))]
    else:
        background = background_rgb + rng.normal(0, 0.02, 3).astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = background
    if band_rgb is not None:
        img[size - size // 8 :, :] = band_rgb
    cy = size * 0.45 + rng.uniform(-size * 0.08, size * 0.08)
    cx = size * 0.5 + rng.uniform(-size * 0.1, size * 0.1)
    r = size * rng.uniform(0.24, 0.32)
    mask = _shape_mask(shape, yy, xx, cy, cx, r)
    shade = _texture(texture, yy, xx, int(rng.integers(4)))
    obj = np.clip(object_rgb + rng.normal(0, 0.04, 3), 0, 1).astype(np.float32)
    img[mask] = obj * shade[mask][:, None]
    img += rng.normal(0, noise, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W, 3] array (deterministic for the same pixels)."""
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """uint8 [H, W, 3] pixels of PNG bytes."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))
