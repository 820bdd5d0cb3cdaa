"""DashCLIP's whole config tree: `EmbeddingConfig` with the model (`ModelConfig`) and the two stages.

Every knob of `python -m embeddings.train / evaluate` is a field here. YAML files hold overrides and `key=value`
arguments override those (core.config.load_config); an unknown or mistyped key is an error naming it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch

from core.config import ConfigError

MAX_POSITIONS = 512  # position embeddings of the text encoders (BERT's)
# all-MiniLM-L6-v2's text sizes: init=minilm sets them (ModelConfig.__post_init__), whatever the config says
MINILM_TEXT_SIZES = {"text_hidden": 384, "text_heads": 12, "text_intermediate": 1536}
MINILM_LAYERS = 6
SIZES = ("image_size", "patch_size", "vision_hidden", "vision_layers", "vision_heads", "text_hidden", "text_layers",
         "text_heads", "text_intermediate", "embed_dim")  # ModelConfig fields that count something: at least 1


@dataclass(frozen=True)
class ModelConfig:
    """Encoder sizes and initialisation. With init = a BLIP directory the sizes come from its config.json and the
    size fields here are ignored (the resolved sizes are recorded in every checkpoint). With init = minilm the text
    encoder has all-MiniLM-L6-v2's sizes (MINILM_TEXT_SIZES, set here with a warning if the config said otherwise)
    and text_layers of its 6 layers.

    pooling: how a text encoder's tokens become one vector: "cls" (the first token, BLIP's) or "mean" (the mean
    over the attention mask, as sentence-transformers' all-MiniLM-L6-v2 was trained to be read). The image-grounded
    (multimodal) encoder always reads its first token. projection_init "identity" starts text_proj (and so
    product_proj and query_proj) as the identity (needs embed_dim == text_hidden): with init=minilm, all 6 layers
    and mean pooling, the untrained model then embeds exactly like the pretrained sentence encoder.

    query_tower: "separate" (DashCLIP: a query encoder and query_proj of their own, copied from the text side when
    stage 2 starts) or "shared" (a siamese tower: queries go through the product's own text encoder and
    product_proj, as sentence-transformers' bi-encoders do; the model then builds no query encoder, so its
    checkpoints hold one text encoder). Shared needs products embedded from their titles
    (modalities="text" or product_input="title"): on ESCI (benchmarks/esci_bench.py) separate towers drifted apart
    from the frozen product side and lost AUC to the shipped encoder, the shared one did not."""

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
    pooling: Literal["cls", "mean"] = "cls"
    projection_init: Literal["random", "identity"] = "random"
    query_tower: Literal["separate", "shared"] = "separate"

    def __post_init__(self):
        if self.init == "minilm":
            changed = {k: v for k, v in MINILM_TEXT_SIZES.items() if getattr(self, k) != v}
            if changed:
                was = ", ".join(f"{k}={getattr(self, k)}" for k in changed)
                warnings.warn(f"model.init=minilm: the text encoder takes all-MiniLM-L6-v2's sizes "
                              f"{', '.join(f'{k}={v}' for k, v in changed.items())} (the config said {was})",
                              stacklevel=3)
                for key, value in changed.items():
                    object.__setattr__(self, key, value)
            if not 1 <= self.text_layers <= MINILM_LAYERS:
                raise ConfigError(f"text_layers={self.text_layers}: init=minilm warm-starts 1 to {MINILM_LAYERS} "
                                  f"layers (all-MiniLM-L6-v2 has {MINILM_LAYERS})")
        for key in SIZES:  # before the divisibility checks below, which a 0 would turn into ZeroDivisionError
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be at least 1")
        if self.projection_init == "identity" and not self.from_blip_dir and self.embed_dim != self.text_hidden:
            raise ConfigError(f"projection_init=identity needs embed_dim == text_hidden; got embed_dim="
                              f"{self.embed_dim}, text_hidden={self.text_hidden}")
        if self.query_tower == "shared" and self.modalities != "text" and self.product_input != "title":
            raise ConfigError(f"query_tower=shared encodes queries with the product encoder, which needs products "
                              f"embedded from their titles (modalities=text or product_input=title); got "
                              f"modalities={self.modalities}, product_input={self.product_input}")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        for hidden, heads in (("vision_hidden", "vision_heads"), ("text_hidden", "text_heads")):
            if getattr(self, hidden) % getattr(self, heads):
                raise ConfigError(f"{hidden}={getattr(self, hidden)} must be a multiple of "
                                  f"{heads}={getattr(self, heads)}")
        for key in ("max_title_len", "max_query_len"):
            if not 2 <= getattr(self, key) <= MAX_POSITIONS:
                raise ConfigError(f"{key}={getattr(self, key)} must be in [2, {MAX_POSITIONS}]")
        if not self.temp_init > 0:
            raise ConfigError(f"temp_init={self.temp_init} must be positive")

    @property
    def from_blip_dir(self) -> bool:
        return self.init not in ("scratch", "minilm")


@dataclass(frozen=True)
class Stage1Config:
    epochs: int = 4
    batch_size: int = 64  # under torchrun the global batch, split across the ranks (embeddings/distributed.py)
    lr: float = 5e-4
    warmup_steps: int = 20
    itm: bool = True  # image-text matching with hard negatives, on top of ITC
    # Share of ITM negatives drawn uniformly from the batch instead of by ITC similarity (0 = BLIP: all hard).
    # Trained from scratch, the ITM head never leaves the constant P(match) = 1/3 on hard negatives alone (demo,
    # 4 epochs: held-out AUC vs random negatives 0.63); half random ones give it easy mismatches to learn from
    # (AUC 0.72, aisle accuracy unchanged). ITM stays weak either way (P(match) near 1/3 for all pairs).
    itm_random_negatives: float = 0.5
    momentum: float = 0.0  # BLIP: 0.995. > 0 keeps EMA copies of the unimodal encoders (needed by queue / alpha)
    queue_size: int = 0  # BLIP: 57600. Momentum features of past batches as extra ITC candidates
    alpha: float = 0.0  # BLIP: 0.4. Weight of the momentum encoders' soft ITC targets
    # Also contrast the projected multimodal representation product_proj(C_i) with the product's own title and
    # image features (InfoNCE, both directions): C_i becomes an embedding in the ITC space, and stage 2 starts from
    # it instead of from a projection that never saw C_i. Off = plain BLIP (ITC + ITM).
    product_itc: bool = True


@dataclass(frozen=True)
class Stage2Config:
    epochs: int = 4
    batch_size: int = 128  # under torchrun the global batch, split across the ranks (embeddings/distributed.py)
    lr: float = 5e-4
    warmup_steps: int = 20
    init_from: Literal["stage1", "offshelf"] = "stage1"  # "offshelf": stage 2 alone, for the ablation
    negatives: int = 3  # explicit negative queries per product
    positive_labels: tuple[int, ...] = (2,)
    negative_labels: tuple[int, ...] = (0, 1)
    negative_weights: tuple[float, ...] = (0.75, 0.25)  # sampling ratio between the negative label types
    in_batch_negatives: bool = True
    # Also the query -> product direction (sentence-transformers' MultipleNegativesRankingLoss: each positive query
    # picks its product among the batch's products), averaged with the product -> query loss above.
    symmetric: bool = False
    # Hard negatives of that direction: per positive pair, up to this many products the query itself judged with a
    # negative label (negative_weights between the labels). Needs symmetric.
    negative_products: int = 0
    train_product_encoder: bool = False  # False: product side frozen, product_proj trained (fast)
    # Learning rate of the encoders (the pretrained weights); 0: `lr` for every parameter. The projections and the
    # temperature (the new layers) always use `lr`.
    encoder_lr: float = 0.0
    # Also leave out the pairs of the seeded held-out products (heldout_product_share), as the demo always did;
    # off: stage 2 holds out by query only (data.stage2_split, printed at the start of every run).
    exclude_heldout_products: bool = False
    eval_every_steps: int = 0  # also validate every k steps (0: at the end of every `eval_every`-th epoch only)
    # Early stopping: with keep_best the final checkpoint holds the weights of the best validation by
    # select_metric (step 0, the starting point, included); patience > 0 stops after that many validations in a
    # row without improvement.
    keep_best: bool = False
    patience: int = 0
    select_metric: Literal["val/cos_auc_2v0", "val/ndcg_at_10"] = "val/cos_auc_2v0"
    # Warn when the loss is still at chance (log(1 + negatives per row), what an encoder that scores every
    # candidate alike gets: collapsed embeddings) after this many steps (0: never).
    chance_check_steps: int = 50
    # L2-SP (Li et al. 2018): l2sp * ||w - w_start||^2 / 2 over the trained encoder weights, against forgetting.
    l2sp: float = 0.0


@dataclass(frozen=True)
class EmbeddingConfig:
    name: str = "demo"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    weight_decay: float = 0.02
    freeze_word_embeddings: bool = True  # the 30k-row vocabulary tables dominate the optimizer step otherwise
    heldout_query_share: float = 0.2  # of the relevance queries, never trained on (stage 2)
    heldout_product_share: float = 0.1  # of the products created in the training window, never trained on
    skip_corrupt_images: bool = False  # drop (and report) products whose picture cannot be decoded
    eval_every: int = 1  # epochs between validation passes (0: none)
    checkpoint_every: int = 50  # steps between resumable checkpoints
    max_steps: int = 0  # train at most this many steps (0: the epochs decide); the schedule ends there too
    stop_at_step: int = 0  # simulate a kill after this many steps: state saved, StopTraining raised (tests)
    checkpoints: str = ""  # default: <data>/embeddings/checkpoints
    threads: int = 1  # torch intra-op threads; 1 is fastest on small shared CPUs (0: torch's default)

    def validate(self) -> None:
        if not 0 <= self.heldout_query_share < 1 or not 0 <= self.heldout_product_share < 1:
            raise ConfigError("EmbeddingConfig: 'heldout_query_share' and 'heldout_product_share' must be in [0, 1)")
        if len(self.stage2.negative_labels) != len(self.stage2.negative_weights):
            raise ConfigError("EmbeddingConfig: 'stage2.negative_weights' needs one weight per negative label")
        if set(self.stage2.positive_labels) & set(self.stage2.negative_labels):
            raise ConfigError("EmbeddingConfig: a label cannot be both positive and negative in stage2")
        if min(self.stage2.negative_weights, default=1) < 0:
            raise ConfigError("EmbeddingConfig: 'stage2.negative_weights' must be non-negative")
        s1 = self.stage1
        if not 0 <= s1.momentum < 1:
            raise ConfigError("EmbeddingConfig: 'stage1.momentum' must be in [0, 1)")
        if (s1.queue_size or s1.alpha) and not s1.momentum:
            raise ConfigError("EmbeddingConfig: 'stage1.queue_size' and 'stage1.alpha' need 'stage1.momentum' > 0 "
                              "(BLIP fills the queue and the soft targets from the momentum encoders)")
        if not 0 <= s1.alpha <= 1:
            raise ConfigError("EmbeddingConfig: 'stage1.alpha' must be in [0, 1]")
        if not 0 <= s1.itm_random_negatives <= 1:
            raise ConfigError("EmbeddingConfig: 'stage1.itm_random_negatives' must be in [0, 1]")
        for key in ("stage1.epochs", "stage1.batch_size", "stage2.epochs", "stage2.batch_size"):
            stage, name = key.split(".")
            if getattr(getattr(self, stage), name) < 1:
                raise ConfigError(f"EmbeddingConfig: '{key}' must be at least 1")
        if self.checkpoint_every < 1:
            raise ConfigError("EmbeddingConfig: 'checkpoint_every' must be at least 1")
        s2 = self.stage2
        for key in ("max_steps", "stop_at_step", "stage2.eval_every_steps", "stage2.patience",
                    "stage2.chance_check_steps"):
            owner = s2 if key.startswith("stage2.") else self
            if getattr(owner, key.removeprefix("stage2.")) < 0:
                raise ConfigError(f"EmbeddingConfig: '{key}' must be non-negative")
        for key in ("stage1.warmup_steps", "stage2.warmup_steps", "eval_every", "threads"):
            owner = getattr(self, key.split(".")[0]) if "." in key else self
            if getattr(owner, key.split(".")[-1]) < 0:
                raise ConfigError(f"EmbeddingConfig: '{key}' must be non-negative")
        if s2.negative_products < 0 or s2.negatives < 0:
            raise ConfigError("EmbeddingConfig: 'stage2.negatives' and 'stage2.negative_products' must be non-negative")
        if s2.negative_products and not s2.symmetric:
            raise ConfigError("EmbeddingConfig: 'stage2.negative_products' are negatives of the query -> product "
                              "direction: set 'stage2.symmetric' too")
        if s2.encoder_lr < 0 or s2.l2sp < 0:
            raise ConfigError("EmbeddingConfig: 'stage2.encoder_lr' and 'stage2.l2sp' must be non-negative")
        if s2.patience and not (s2.keep_best and (self.eval_every or s2.eval_every_steps)):
            raise ConfigError("EmbeddingConfig: 'stage2.patience' needs 'stage2.keep_best' and validation "
                              "('eval_every' or 'stage2.eval_every_steps')")


def set_threads(threads: int) -> None:
    """Apply the `threads` setting to torch (0 leaves torch's default)."""
    if threads:
        torch.set_num_threads(threads)
