"""What DashClip reads: token ids of titles and queries, and pictures as normalised pixel tensors."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from transformers import BertTokenizer

# BlipImageProcessor normalises pixels with the OpenAI CLIP statistics (OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def tokenize(tokenizer: BertTokenizer, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [B, L], padded to the longest text, L <= max_len."""
    enc = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def preprocess_images(images: list, image_size: int) -> torch.Tensor:
    """PNG bytes or uint8 [H, W, 3] arrays -> [B, 3, S, S] float tensor, resized (bicubic) and normalised as
    BlipImageProcessor does. An image that cannot be decoded raises ValueError naming its index."""
    out = np.empty((len(images), image_size, image_size, 3), dtype=np.float32)  # [B, S, S, 3]
    for i, img in enumerate(images):
        try:
            if isinstance(img, (bytes, bytearray, memoryview)):
                with Image.open(io.BytesIO(img)) as decoded:
                    pil = decoded.convert("RGB")  # also forces the lazy decode inside the try
            else:
                arr = np.asarray(img)
                if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                    raise ValueError(f"want a uint8 [H, W, 3] array, got {arr.dtype} {arr.shape}")
                pil = Image.fromarray(arr, mode="RGB")
            if pil.size != (image_size, image_size):
                pil = pil.resize((image_size, image_size), Image.BICUBIC)
        except Exception as e:  # PIL raises many exception types for bad bytes
            raise ValueError(f"image {i}: cannot decode ({type(e).__name__}: {e})") from e
        out[i] = np.asarray(pil, dtype=np.float32) / 255.0
    out = (out - np.array(IMAGE_MEAN, np.float32)) / np.array(IMAGE_STD, np.float32)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # [B, S, S, 3] -> [B, 3, S, S]
