"""Whole catalogs and query lists through a DashClip, in batches and without gradients (validation during training,
evaluation, benchmarks), and texts through the off-the-shelf sentence encoder (embed_sentences)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import BertModel, BertTokenizer

from embeddings.data import Catalog
from embeddings.model import DashClip, mean_pool
from embeddings.preprocess import tokenize


@torch.no_grad()
def product_hidden_all(model: DashClip, catalog: Catalog, ids: torch.Tensor, mask: torch.Tensor,
                       batch_size: int = 256, progress: bool = False, rows: np.ndarray | None = None) -> torch.Tensor:
    """[N, H] product representations before product_proj (multimodal C_i unless product_input says otherwise)
    for the catalog rows `rows` (default: all), in that order. Batches hold titles of similar length (less
    padding: about half the time on real titles of 10 to 75 tokens)."""
    was_training = model.training
    model.eval()
    rows = np.arange(len(catalog)) if rows is None else np.asarray(rows)
    order = np.argsort(-mask[torch.from_numpy(rows)].sum(1).numpy(), kind="stable") if len(rows) else rows
    out = []
    for s in tqdm(range(0, len(rows), batch_size), desc="products", unit="batch", disable=not progress):
        r = torch.from_numpy(rows[order[s : s + batch_size]])
        width = int(mask[r].sum(1).max())
        px = None if catalog.pixels is None else catalog.pixels[r]
        out.append(model.product_hidden(ids[r, :width], mask[r, :width], px))
    model.train(was_training)
    if not out:
        return torch.zeros(0, model.text_encoder.config.hidden_size)
    hidden = torch.cat(out)  # [N, H] in length order
    return hidden[torch.from_numpy(np.argsort(order, kind="stable"))]  # back to the order of rows


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


@torch.no_grad()
def embed_sentences(bert: BertModel, tokenizer: BertTokenizer, texts: list[str], max_len: int,
                    batch_size: int = 64) -> np.ndarray:
    """[N, H] sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2: tokens truncated to
    max_len, the last hidden states mean-pooled over the attention mask, L2-normalised. Batches of similar length
    (sentence-transformers sorts by length too); the result is in the order of texts."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), bert.config.hidden_size), np.float32)
    for s in range(0, len(texts), batch_size):
        rows = order[s : s + batch_size]
        ids, mask = tokenize(tokenizer, [texts[i] for i in rows], max_len)
        hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state  # [b, L, H]
        out[rows] = F.normalize(mean_pool(hidden, mask), dim=-1).numpy()
    return out
