"""What DashClip reads: token ids of titles and queries, and pictures as normalised pixel tensors."""

from __future__ import annotations

import io
import struct

import numpy as np
import torch
from PIL import Image
from transformers import BertTokenizer

# BlipImageProcessor normalises pixels with the OpenAI CLIP statistics (OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


# Characters per token kept before tokenizing: the tokenizer reads a whole text before truncating it, so a 1 MB
# title took seconds. Titles tokenize at 3 to 6 characters per token; a text longer than this many characters per
# allowed token is cut first (its first max_len tokens are then those of the cut text unless it is mostly spaces).
CHARS_PER_TOKEN = 32


def tokenize(tokenizer: BertTokenizer, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [B, L], padded to the longest text, L <= max_len. ValueError naming the index
    of a text that is not a string."""
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"text {i}: expected a string, got {type(text).__name__}")
    cut = CHARS_PER_TOKEN * max_len
    texts = [t if len(t) <= cut else t[:cut] for t in texts]
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


# The most pixels a catalog picture may declare. Checked from the PNG header before any pixel is decoded, so a
# decompression bomb (a few kB declaring 50000 x 50000 pixels, 7.5 GB as RGB) is refused, not allocated. 8192 x 8192
# is far above a product photo (DashCLIP sees 384 x 384 at most) and below PIL's own bomb limit (89 Mpx, where it
# only warns up to twice that).
MAX_IMAGE_PIXELS = 8192 * 8192


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk (the first, at a fixed offset), or None if there is none."""
    head = bytes(data[:24])
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def decode_image(img, image_size: int) -> np.ndarray:
    """PNG bytes or a uint8 [H, W, 3] array -> [S, S, 3] float32 in [0, 1], resized (bicubic). ValueError saying
    what is wrong: a header declaring more than MAX_IMAGE_PIXELS (checked before PIL allocates anything), not a
    PNG, a file that does not decode."""
    if isinstance(img, (bytes, bytearray, memoryview)):
        size = png_size(img)
        if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
            raise ValueError(f"the PNG declares {size[0]} x {size[1]} pixels, over the limit of {MAX_IMAGE_PIXELS} "
                             f"(a decompression bomb, or a picture to downscale first)")
        try:
            with Image.open(io.BytesIO(img), formats=["PNG"]) as decoded:
                pil = decoded.convert("RGB")  # forces the lazy decode inside the try
        except Exception as e:  # PIL raises many exception types for bad bytes
            raise ValueError(f"cannot decode ({type(e).__name__}: {e})") from e
    else:
        arr = np.asarray(img)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"cannot decode (want a uint8 [H, W, 3] array, got {arr.dtype} {arr.shape})")
        pil = Image.fromarray(arr, mode="RGB")
    if pil.size != (image_size, image_size):
        pil = pil.resize((image_size, image_size), Image.BICUBIC)
    return np.asarray(pil, dtype=np.float32) / 255.0


def pixel_tensor(pixels: np.ndarray) -> torch.Tensor:
    """[B, S, S, 3] floats in [0, 1] -> [B, 3, S, S], normalised as BlipImageProcessor does."""
    out = (pixels - np.array(IMAGE_MEAN, np.float32)) / np.array(IMAGE_STD, np.float32)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def preprocess_images(images: list, image_size: int) -> torch.Tensor:
    """PNG bytes or uint8 [H, W, 3] arrays -> [B, 3, S, S] float tensor, resized (bicubic) and normalised as
    BlipImageProcessor does. An image that cannot be decoded (or declares too many pixels) raises ValueError
    naming its index."""
    out = np.empty((len(images), image_size, image_size, 3), dtype=np.float32)  # [B, S, S, 3]
    for i, img in enumerate(images):
        try:
            out[i] = decode_image(img, image_size)
        except ValueError as e:
            raise ValueError(f"image {i}: {e}") from e
    return pixel_tensor(out)
