"""DashCLIP: BLIP-style product encoders plus a dedicated query encoder (docs/design.md section 5).

Product side (transformers' BlipForImageTextRetrieval provides the parts):
    image  --ViT (vision_model)-->  image_embeds [B, 1+P, Hv] --vision_proj(CLS)--> image_feat [B, D]
    title  --text_encoder-->        text_embeds  [B, L, Ht]   --text_proj(pool)-->  text_feat  [B, D]  (unimodal)
    title + image_embeds --text_encoder with cross-attention--> multimodal [B, L, Ht]
        first token C_i --product_proj--> product embedding [B, D];  --itm_head--> match logits [B, 2]
Query side: query_encoder, a text-only BlipTextModel starting as a copy of the product text encoder, + query_proj;
with ModelConfig.query_tower="shared" there are none (queries go through the title encoder and product_proj), so a
shared-tower model and its checkpoints hold one text encoder, not two.
Every *_feat / embedding is L2-normalised; D = embed_dim (BLIP: 256), P = (image_size / patch_size)^2 patches.
pool = ModelConfig.pooling: the first token (BLIP's [CLS]) or the mean over the attention mask (sentence-transformers';
the only reading all-MiniLM-L6-v2 was trained for: its first token maps every title to nearly the same vector).

build_model initialises one as ModelConfig.init says (embeddings.pretrained: scratch, MiniLM warm start or a
Hugging Face BLIP directory); embeddings.checkpoint saves and loads it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BlipForImageTextRetrieval, BlipTextModel

from embeddings.config import ModelConfig
from embeddings.pretrained import blip_config, blip_dir, load_pretrained, load_tokenizer, warm_start_from_minilm


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, L, H] token states, [B, L] attention mask -> [B, H] mean over the unmasked tokens (sentence-transformers'
    mean pooling: sum(h * m) / max(sum(m), 1e-9))."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


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
        if cfg.projection_init == "identity":
            _set_identity(self.text_proj)
        # C_i -> shared space; starts as the text projection (as the image projection for the image-only ablation)
        self.product_proj = copy.deepcopy(blip.vision_proj if self.product_input == "image" else blip.text_proj)
        self.query_encoder: BlipTextModel | None = None  # built by _restart_query_tower for a separate tower only
        self.query_proj: nn.Linear | None = None
        self._restart_query_tower()
        self.temp = nn.Parameter(torch.tensor(float(cfg.temp_init)))  # ITC temperature (stage 1)
        self.pqc_temp = nn.Parameter(torch.tensor(float(cfg.temp_init)))  # product-query temperature (stage 2)
        self.train()  # from_pretrained leaves BLIP's parts in eval mode; make the modes agree

    @property
    def embed_dim(self) -> int:
        return self.product_proj.out_features

    @property
    def product_input(self) -> str:
        return "title" if self.cfg.modalities == "text" else self.cfg.product_input

    @torch.no_grad()
    def _restart_query_tower(self) -> None:
        """Make the query side what cfg.query_tower asks for. Separate: a text-only query encoder (the text
        encoder's config without cross-attention layers) and query_proj, built if absent, holding copies of the
        current text encoder's and text_proj's values (separate tensors). Shared: none at all, so no stale second
        encoder is trained, saved or held in memory (one read from an older checkpoint is dropped)."""
        if self.cfg.query_tower == "shared":
            self.query_encoder = self.query_proj = None
            return
        if self.query_encoder is None:
            query_config = copy.deepcopy(self.blip_config.text_config)
            query_config.is_decoder = False
            self.query_encoder = BlipTextModel(query_config, add_pooling_layer=False)
            self.query_proj = copy.deepcopy(self.text_proj)
        text_only = {k: v for k, v in self.text_encoder.state_dict().items() if ".crossattention." not in k}
        self.query_encoder.load_state_dict(text_only, strict=True)  # copies values: the two stay separate tensors
        self.query_proj.load_state_dict(self.text_proj.state_dict())

    def start_stage2(self, keep_product_proj: bool = False) -> None:
        """Restart the query side (encoder, projection; none for cfg.query_tower="shared") and product_proj from
        the current, e.g. stage-1 trained, product encoders. With keep_product_proj, a multimodal product embedding
        keeps its product_proj: stage 1 already trained it on C_i (Stage1Config.product_itc)."""
        keep = keep_product_proj and self.product_input == "multimodal"
        trained = copy.deepcopy(self.product_proj.state_dict()) if keep else None
        self._restart_query_tower()
        source = self.vision_proj if self.product_input == "image" else self.text_proj
        self.product_proj = copy.deepcopy(source)
        if trained is not None:
            self.product_proj.load_state_dict(trained)

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values [B, 3, S, S] -> (image_embeds [B, 1+P, Hv], image_feat [B, D])."""
        image_embeds = self.vision_model(pixel_values=pixel_values).last_hidden_state  # [B, 1+P, Hv], CLS first
        return image_embeds, F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """A text encoder's [B, L, H] states -> [B, H]: the first token or the masked mean (ModelConfig.pooling)."""
        return mean_pool(hidden, attention_mask) if self.cfg.pooling == "mean" else hidden[:, 0]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unimodal title encoder (no encoder_hidden_states: cross-attention is skipped) -> ([B, L, Ht], [B, D])."""
        text_embeds = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return text_embeds, F.normalize(self.text_proj(self.pool(text_embeds, attention_mask)), dim=-1)

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
        """What product_proj projects, [B, H]: multimodal C_i, the pooled title or the image's first token."""
        if self.product_input == "title":
            hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return self.pool(hidden, attention_mask)  # [B, Ht]
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
        """Search query -> [B, D] through the dedicated query encoder and query_proj, or with
        ModelConfig.query_tower="shared" through the product's title encoder and product_proj (siamese)."""
        if self.cfg.query_tower == "shared":
            return self.encode_product(input_ids, attention_mask)
        hidden = self.query_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B,L,Ht]
        return F.normalize(self.query_proj(self.pool(hidden, attention_mask)), dim=-1)


@torch.no_grad()
def _set_identity(proj: nn.Linear) -> None:
    """proj(x) = x: the projection starts as the identity (ModelConfig.projection_init)."""
    if proj.in_features != proj.out_features:
        raise ValueError(f"projection_init=identity needs a square projection; this one maps {proj.in_features} "
                         f"to {proj.out_features} (embed_dim must equal the text encoder's hidden size)")
    proj.weight.copy_(torch.eye(proj.in_features))
    proj.bias.zero_()


def build_model(cfg: ModelConfig, seed: int = 0) -> DashClip:
    """A DashClip for the config: from scratch, warm-started from MiniLM, or from a BLIP checkpoint directory."""
    torch.manual_seed(seed)
    if cfg.from_blip_dir:
        blip = load_pretrained(BlipForImageTextRetrieval, blip_dir(cfg))
    else:
        blip = BlipForImageTextRetrieval(blip_config(cfg))
        if cfg.init == "minilm":
            warm_start_from_minilm(blip.text_encoder)
    enc_token_id = cfg.enc_token_id if cfg.enc_token_id >= 0 else load_tokenizer(cfg).cls_token_id
    return DashClip(cfg, blip, enc_token_id)
