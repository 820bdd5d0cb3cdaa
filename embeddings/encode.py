"""Whole catalogs and query lists through a DashClip, in batches and without gradients (validation during training,
evaluation, benchmarks)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import BertTokenizer

from embeddings.data import Catalog
from embeddings.model import DashClip
from embeddings.preprocess import tokenize


@torch.no_grad()
def product_hidden_all(model: DashClip, catalog: Catalog, ids: torch.Tensor, mask: torch.Tensor,
                       batch_size: int = 256, progress: bool = False, rows: np.ndarray | None = None) -> torch.Tensor:
    """[N, H] product representations before product_proj (multimodal C_i unless product_input says otherwise)
    for the catalog rows `rows` (default: all)."""
    was_training = model.training
    model.eval()
    rows = np.arange(len(catalog)) if rows is None else np.asarray(rows)
    out = []
    for s in tqdm(range(0, len(rows), batch_size), desc="products", unit="batch", disable=not progress):
        r = torch.from_numpy(rows[s : s + batch_size])
        width = int(mask[r].sum(1).max())
        px = None if catalog.pixels is None else catalog.pixels[r]
        out.append(model.product_hidden(ids[r, :width], mask[r, :width], px))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.text_encoder.config.hidden_size)


@torch.no_grad()
def embed_products(model: DashClip, catalog: Catalog, tokenizer: BertTokenizer, max_len: int) -> np.ndarray:
    """[N, D] product embeddings of every catalog row (titles tokenized up to max_len)."""
    ids, mask = tokenize(tokenizer, catalog.titles, max_len)
    hidden = product_hidden_all(model, catalog, ids, mask)
    return F.normalize(model.product_proj(hidden), dim=-1).numpy()  # [N, D]


@torch.no_grad()
def embed_queries(model: DashClip, texts: list[str], tokenizer: BertTokenizer, max_len: int,
                  batch_size: int = 1024) -> np.ndarray:
    """[Q, D] query embeddings. Leaves the model in eval mode."""
    model.eval()
    out = []
    for s in range(0, len(texts), batch_size):
        ids, mask = tokenize(tokenizer, texts[s : s + batch_size], max_len)
        out.append(model.encode_query(ids, mask))
    return torch.cat(out).numpy() if out else np.zeros((0, model.embed_dim), np.float32)
