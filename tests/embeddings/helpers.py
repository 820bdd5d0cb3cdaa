"""Helpers of the DashCLIP tests: a tiny model config with inputs for it, and the entry points on the tiny world."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from embeddings import train
from embeddings.config import ModelConfig
from embeddings.preprocess import preprocess_images, tokenize
from embeddings.pretrained import load_tokenizer, minilm_dir
from tests.conftest import ROOT

CONFIG = str(ROOT / "experiments" / "configs" / "embeddings" / "tiny.yaml")
TINY = ModelConfig(init="scratch", image_size=32, patch_size=8, vision_hidden=32, vision_layers=2, vision_heads=2,
                   text_hidden=32, text_layers=2, text_heads=2, text_intermediate=64, embed_dim=16)
TITLES = ["Sunny Farms Gala Apples 1kg", "Blue Bay Lager 6 Pack", "Whiskers cat litter"]


def save_tiny_blip(folder, image_size: int, seed: int) -> None:
    """A Hugging Face BLIP checkpoint directory (save_pretrained) with tiny sizes unlike TINY's, and MiniLM's
    vocabulary as its tokenizer: what a user's --blip / init=<dir> points at."""
    from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval

    config = BlipConfig(text_config=dict(vocab_size=30522, hidden_size=24, encoder_hidden_size=16, intermediate_size=48,
                                         num_hidden_layers=1, num_attention_heads=2, is_decoder=True, bos_token_id=101),
                        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=image_size, patch_size=8),
                        image_text_hidden_size=8)
    torch.manual_seed(seed)
    BlipForImageTextRetrieval(config).save_pretrained(folder)
    BertTokenizer(vocab_file=str(minilm_dir() / "vocab.txt")).save_pretrained(folder)


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def model_inputs(cfg: ModelConfig = TINY, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids and mask of TITLES and a random picture for each, as the model reads them."""
    rng = np.random.default_rng(seed)
    ids, mask = tokenize(load_tokenizer(cfg), TITLES, cfg.max_title_len)
    pixels = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in TITLES]
    return ids, mask, preprocess_images([png(p) for p in pixels], cfg.image_size)


@torch.no_grad()
def all_outputs(model, ids, mask, px) -> dict[str, torch.Tensor]:
    """Every output of a DashClip on the same inputs."""
    image_embeds, image_feat = model.encode_image(px)
    multimodal = model.encode_multimodal(ids, mask, image_embeds)
    return {"image": image_feat, "text": model.encode_text(ids, mask)[1], "itm": model.itm_logits(multimodal),
            "product": model.encode_product(ids, mask, px), "query": model.encode_query(ids, mask)}


def run_train(world, stage, *overrides, out_name=None) -> int:
    """python -m embeddings.train on the tiny config."""
    extra = ["--out-name", out_name] if out_name else []
    return train.main(["--stage", str(stage), "--config", CONFIG, "--data", str(world), "--no-progress", *extra,
                       *overrides])


def mlflow_runs(experiment: str = "dashclip-embeddings") -> dict:
    """The runs of an MLflow experiment (default: the embeddings') by name."""
    import mlflow  # here, not at the top: the model tests import this module and never need MLflow

    client = mlflow.tracking.MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
