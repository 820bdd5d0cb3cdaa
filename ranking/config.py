"""Configs of the neural models and their training: plain dataclasses, so configs load without TensorFlow.

`ranking.train.RankingConfig` nests them as `net:` and `train:`; YAML files override single keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


# What each named model is made of: content = how the DashCLIP embeddings enter ("none", a second "tower",
# or "concat" into the DCN input), history = whether tower B sees the purchase-history embedding.
MODEL_KINDS: dict[str, dict] = {
    "dcn": {"content": "none", "history": False},
    "dashclip_two_tower": {"content": "tower", "history": True},
    "dashclip_two_tower_no_history": {"content": "tower", "history": False},
    "dcn_dashclip_concat": {"content": "concat", "history": True},
}


@dataclass(frozen=True)
class NetConfig:
    """Architecture of the neural models (shared, so tower A is the same in every comparison)."""

    id_embedding_dim: int = 16
    cross_layers: int = 3
    # 0 = full-rank cross layers (DCN-V2's and TFRS's default); k > 0 = low rank U V^T of rank k, fewer FLOPs for
    # wide inputs (benchmarks/ranking_bench.py measures both: rank 64 trains more examples/s, at a smaller share
    # of the matmul roof; the demo's AUC is the same either way).
    cross_projection_dim: int = 0
    structure: Literal["parallel", "stacked"] = "parallel"  # cross || deep, or cross -> deep
    deep_layers: tuple[int, ...] = (256, 128)
    content_projection_dim: int = 64  # embed_p, embed_q, embed_h widths
    content_layers: tuple[int, ...] = ()  # optional FC layers on tower B's output before the head
    head_layers: tuple[int, ...] = (128, 64)
    dropout: float = 0.0
    embedding_l2: float = 0.0  # L2 on the id-embedding rows a batch uses (cheap: touched rows only)
    id_dropout: float = 0.05  # training: share of ids sent to their OOV row, which then learns unseen ids

    def validate(self) -> None:
        from core.config import ConfigError

        if self.id_embedding_dim < 1 or self.content_projection_dim < 1:
            raise ConfigError("net: id_embedding_dim and content_projection_dim must be >= 1")
        if self.cross_layers < 0 or self.cross_projection_dim < 0:
            raise ConfigError("net: cross_layers and cross_projection_dim must be >= 0")
        if any(u < 1 for u in self.deep_layers + self.content_layers + self.head_layers):
            raise ConfigError("net: layer widths must be >= 1")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.id_dropout < 1.0:
            raise ConfigError("net: dropout and id_dropout must lie in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of the neural models."""

    epochs: int = 4  # CTR models with id embeddings usually peak after one pass; early stopping decides
    batch_size: int = 4096
    learning_rate: float = 2e-3  # Adam on the dense layers
    table_optimizer: Literal["lazy_adam", "adagrad", "sgd", "keras_adam"] = "lazy_adam"  # keras_adam: dense sweep
    table_learning_rate: float = 5e-3
    early_stopping_patience: int = 1  # epochs without a validation-AUC gain of min_delta
    min_delta: float = 1e-4
    lr_decay_factor: float = 0.5  # both learning rates, after lr_decay_patience epochs without a gain
    lr_decay_patience: int = 1  # (acts before early stopping only when early_stopping_patience > 1)
    min_learning_rate: float = 1e-5
    # After training: fit P = sigmoid(a * logit + b) on the validation split ("platt"), b alone ("bias"), or not.
    calibration: Literal["platt", "bias", "none"] = "platt"
    eval_batch_size: int = 16384
    steps_per_execution: int = 16  # training steps per call into the compiled graph (less Python per step)
    resume: bool = True  # continue from a matching checkpoint

    def validate(self) -> None:
        from core.config import ConfigError

        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1 or self.steps_per_execution < 1:
            raise ConfigError("train: epochs, batch_size, eval_batch_size and steps_per_execution must be >= 1")
        if self.learning_rate <= 0 or self.table_learning_rate <= 0:
            raise ConfigError("train: learning rates must be > 0")
        if not 0 < self.lr_decay_factor <= 1:
            raise ConfigError("train.lr_decay_factor must lie in (0, 1]")
