"""The ranking stage's whole config tree: `RankingConfig` and the sections it nests. Plain dataclasses, so configs
load without TensorFlow; YAML files (experiments/configs/ranking/*.yaml) override single keys.

    RankingConfig           python -m ranking.train: data, models, seeds, comparisons, export
      features: FeatureConfig   which training-set columns the models read, and how
      net:      NetConfig       architecture of the neural models
      train:    TrainConfig     their optimisation
      baselines: BaselineConfig the count, linear and tree baselines
      slices:   SliceConfig     slice boundaries of the evaluation
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from core.config import ConfigError, check_at_least, check_folder_name

EXPERIMENT = "pctr-ranking"

# What each named neural model is made of: content = how the DashCLIP embeddings enter ("none", a second "tower",
# or "concat" into the DCN input), history = whether tower B sees the purchase-history embedding.
MODEL_KINDS: dict[str, dict] = {
    "dcn": {"content": "none", "history": False},
    "dashclip_two_tower": {"content": "tower", "history": True},
    "dashclip_two_tower_no_history": {"content": "tower", "history": False},
    "dcn_dashclip_concat": {"content": "concat", "history": True},
}
NEURAL = tuple(MODEL_KINDS)
BASELINES = ("base_rate", "historical_ctr", "logistic_regression", "gbdt")
KNOWN_MODELS = BASELINES + NEURAL

# Every slice name ranking.slices.slice_masks can produce (a slice only exists when its columns are in the split).
SLICE_PATTERN = (r"query_(head|torso|tail)|product_(new|old|cold)|product_history(_\d+(_\d+|_plus)?)?"
                 r"|user_(history|no_history)|position_\d+")
SLICE_NAMES = ("query_head, query_torso, query_tail, product_new, product_old, product_cold, product_history "
               "(all its buckets), product_history_<lo>_<hi>, user_history, user_no_history, position_<k>")


@dataclass(frozen=True)
class FeatureConfig:
    """Which training-set columns the models read, and how ordinary features are treated."""

    # Sparse ids (int64 or string columns): one embedding row per value seen in train, unseen values -> OOV buckets.
    id_features: tuple[str, ...] = ("user_id", "query_id", "product_id", "ad_id", "campaign_id", "advertiser_id",
                                    "store_id", "position", "device", "aisle", "brand")
    # Dense floats; the historical counts come on top of these when count_features is "auto".
    dense_features: tuple[str, ...] = ("price", "discount", "rating", "rating_count", "store_distance_km",
                                       "product_age_days", "history_count")
    count_features: Literal["auto", "none"] = "auto"  # auto: every column named <entity>_<impressions|clicks>_<window>
    # Dense features passed through sign(x) * log1p(|x|) before standardising (counts always are).
    log_features: tuple[str, ...] = ("price", "rating_count", "store_distance_km", "product_age_days",
                                     "history_count")
    dense_clip: float = 5.0  # standardised dense values are clipped to +-this (train-only statistics meet new data)
    ctr_features: bool = True  # add smoothed CTR logits for every <entity>_{clicks,impressions}_<window> pair
    ctr_prior_strength: float = 20.0  # pseudo-impressions at the train base rate in those CTRs
    product_embedding: str = "product_embedding"
    query_embedding: str = "query_embedding"
    history_embedding: str = "history_embedding"
    label: str = "click"
    nan_policy: Literal["fail", "impute"] = "fail"  # a NaN/null in a dense feature: error, or the train mean
    min_id_count: int = 1  # ids seen fewer times in train share the OOV buckets
    max_vocab: int = 500_000  # per id feature, most frequent first
    oov_buckets: int = 1  # hashed buckets for unseen ids, per feature

    def validate(self) -> None:
        if not self.id_features:
            raise ConfigError("features.id_features: the neural models need at least one id feature")
        for key in ("id_features", "dense_features"):
            values = getattr(self, key)
            if len(set(values)) != len(values):
                raise ConfigError(f"features.{key}: duplicate names in {list(values)}")
        if self.min_id_count < 1 or self.max_vocab < 1 or self.oov_buckets < 1:
            raise ConfigError("features: min_id_count, max_vocab and oov_buckets must be >= 1")
        if self.ctr_prior_strength <= 0 or self.dense_clip <= 0:
            raise ConfigError("features: ctr_prior_strength and dense_clip must be > 0")


DENSE_INITIALIZERS = ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal",
                      "random_normal", "random_uniform", "truncated_normal", "orthogonal")


@dataclass(frozen=True)
class NetConfig:
    """Architecture of the neural models (shared, so tower A is the same in every comparison)."""

    id_embedding_dim: int = 16
    cross_layers: int = 3
    # 0 = full-rank cross layers (DCN-V2's and TFRS's default); k > 0 = low rank U V^T of rank k, fewer FLOPs for
    # wide inputs (benchmarks/ranking_bench.py measures both: rank 64 trains more examples/s, at a smaller share
    # of the matmul roof; the demo's AUC is the same either way).
    cross_projection_dim: int = 0
    # matrix: DCN-V2's x_{l+1} = x0 * (W x_l + b) + x_l (full, or low rank with cross_projection_dim);
    # vector: the original DCN's x_{l+1} = x0 * (x_l . w) + b + x_l (what DeepCTR's and FuxiCTR's DCN use)
    cross_type: Literal["matrix", "vector"] = "matrix"
    structure: Literal["parallel", "stacked"] = "parallel"  # cross || deep, or cross -> deep
    deep_layers: tuple[int, ...] = (256, 128)
    content_projection_dim: int = 64  # embed_p, embed_q, embed_h widths
    content_layers: tuple[int, ...] = ()  # optional FC layers on tower B's output before the head
    head_layers: tuple[int, ...] = (128, 64)
    dropout: float = 0.0  # after each dense layer; masks drawn from (seed, step, layer), no generator state, so a
    #                       resumed run replays the uninterrupted run's draws (ranking.models.StepDropout)
    embedding_l2: float = 0.0  # L2 on the id-embedding rows a batch uses (cheap: touched rows only)
    id_dropout: float = 0.05  # training: share of ids sent to their OOV row, which then learns unseen ids
    # Initialisers: the id-embedding table (random_uniform in [-scale, scale], random_normal / truncated_normal with
    # std scale (DeepCTR and FuxiCTR: normal, std 1e-4), or glorot_uniform) and the dense and cross kernels (a Keras
    # initializer name: glorot_uniform, glorot_normal, he_uniform, he_normal, lecun_uniform, ...)
    embedding_initializer: Literal["random_uniform", "random_normal", "truncated_normal", "glorot_uniform"] = \
        "random_uniform"
    embedding_init_scale: float = 0.05
    dense_initializer: str = "glorot_uniform"

    def validate(self) -> None:
        if self.id_embedding_dim < 1 or self.content_projection_dim < 1:
            raise ConfigError("net: id_embedding_dim and content_projection_dim must be >= 1")
        if self.cross_layers < 0 or self.cross_projection_dim < 0:
            raise ConfigError("net: cross_layers and cross_projection_dim must be >= 0")
        if any(u < 1 for u in self.deep_layers + self.content_layers + self.head_layers):
            raise ConfigError("net: layer widths must be >= 1")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.id_dropout < 1.0:
            raise ConfigError("net: dropout and id_dropout must lie in [0, 1)")
        if self.embedding_init_scale <= 0:
            raise ConfigError("net.embedding_init_scale must be > 0")
        if self.dense_initializer not in DENSE_INITIALIZERS:
            raise ConfigError(f"net.dense_initializer: unknown '{self.dense_initializer}' (known: "
                              f"{', '.join(DENSE_INITIALIZERS)})")


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
    resume: bool = True  # continue from a matching checkpoint (also one written under another strategy)
    # tf.distribute (ranking/distribute.py, docs/scaling.md): default (one process); mirrored (one replica per local
    # GPU, else the CPU); multi_worker (MultiWorkerMirroredStrategy: one process per worker, the cluster and this
    # process's task in TF_CONFIG; each worker trains on its share of every global batch). batch_size is always
    # the GLOBAL batch: a batch that does not divide by the replicas gives the first ones one row more, and the
    # loss is divided by the global row count, so any strategy follows the single-process gradients. Only the
    # chief writes checkpoints (shared checkpoint_dir: every worker resumes from it) and MLflow runs.
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1 or self.steps_per_execution < 1:
            raise ConfigError("train: epochs, batch_size, eval_batch_size and steps_per_execution must be >= 1")
        if self.learning_rate <= 0 or self.table_learning_rate <= 0:
            raise ConfigError("train: learning rates must be > 0")
        if not 0 < self.lr_decay_factor <= 1:
            raise ConfigError("train.lr_decay_factor must lie in (0, 1]")
        check_at_least("train.", self, 0, "early_stopping_patience", "lr_decay_patience")


@dataclass(frozen=True)
class BaselineConfig:
    """The baselines of ranking/baselines.py."""

    prior_strength: float = 50.0  # historical_ctr: pseudo-impressions pulling each CTR to its parent's
    ctr_hierarchy: tuple[str, ...] = ("ad_id", "product_id")  # finest first; each backs off to the next
    ctr_factors: tuple[str, ...] = ("query_id", "position")  # independent CTR ratios multiplied in
    lr_hash_bits: int = 20
    lr_crosses: tuple[tuple[str, str], ...] = (("query_id", "product_id"), ("query_id", "aisle"),
                                                ("position", "product_id"))
    lr_c: float = 1.0
    # non-empty: fit logistic_regression once per C of this grid and keep the best validation log loss (lr_c is
    # then unused); the chosen C and every C's validation log loss are logged
    lr_c_grid: tuple[float, ...] = ()
    # saga epochs at most (lbfgs is 50x slower on 2^20 hashed columns): it converges in about 50 and stops there;
    # a fit that reaches the limit first says so with scikit-learn's ConvergenceWarning
    lr_max_iter: int = 100
    gbdt_rounds: int = 400
    gbdt_learning_rate: float = 0.05
    gbdt_leaves: int = 63
    gbdt_min_data_in_leaf: int = 100
    gbdt_early_stopping: int = 30
    gbdt_categorical: tuple[str, ...] = ("position", "device", "aisle", "brand", "store_id", "campaign_id",
                                         "advertiser_id")
    threads: int = 1  # LightGBM threads; OpenMP spin-waits collapse on a shared 2-core machine, so 1 by default

    def validate(self) -> None:
        if self.prior_strength <= 0:
            raise ConfigError("baselines.prior_strength must be > 0")
        if not 10 <= self.lr_hash_bits <= 26:
            raise ConfigError("baselines.lr_hash_bits must lie in [10, 26]")
        if self.lr_max_iter < 1:
            raise ConfigError("baselines.lr_max_iter must be >= 1")
        if self.lr_c <= 0 or any(c <= 0 for c in self.lr_c_grid):
            raise ConfigError("baselines.lr_c and every lr_c_grid value must be > 0")
        check_at_least("baselines.", self, 1, "gbdt_rounds", "gbdt_min_data_in_leaf")
        check_at_least("baselines.", self, 2, "gbdt_leaves")  # LightGBM's num_leaves minimum
        check_at_least("baselines.", self, 0, "gbdt_early_stopping", "threads")


@dataclass(frozen=True)
class SliceConfig:
    """Slice boundaries (train frequencies, feature-store counts) and the smallest slice that gets metrics."""

    query_head_min_requests: int = 100  # head: queries with at least this many train requests
    query_tail_max_requests: int = 4  # tail: at most this many (0 = never seen in train)
    product_cold_max_impressions: int = 0  # cold: the product's longest-window impression count is at most this
    product_history_edges: tuple[int, ...] = (0, 10, 30, 100)  # upper edges of the product-history buckets
    min_count: int = 100

    def validate(self) -> None:
        if self.query_tail_max_requests >= self.query_head_min_requests:
            raise ConfigError("slices: query_tail_max_requests must be below query_head_min_requests")
        check_at_least("slices.", self, 0, "query_tail_max_requests", "product_cold_max_impressions", "min_count")
        edges = self.product_history_edges
        if not edges or edges[0] < 0 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ConfigError(f"slices: product_history_edges must be increasing integers >= 0, got {list(edges)}")


@dataclass(frozen=True)
class RankingConfig:
    """`python -m ranking.train`: one experiment. YAML files hold overrides of these defaults."""

    name: str = "demo"  # the parent run's name
    data: str = "data/demo"  # data/<name>/: training_sets/, hidden/ (the oracle, when the world has one)
    embedding_version: str = ""  # "" = the only training set under <data>/training_sets/
    training_set: str = ""  # an explicit training-set folder (overrides data + embedding_version)
    models: tuple[str, ...] = ("base_rate", "historical_ctr", "logistic_regression", "gbdt", "dcn",
                               "dashclip_two_tower")
    seeds: int = 1  # each model trained with seeds seed, seed+1, ...; mean and std reported
    seed: int = 0
    max_rows: int = 0  # > 0: a random sample of this many rows per split (quick experiments)
    eval_train_rows: int = 200_000  # train-split metrics on a sample of this many rows (0 = all)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    net: NetConfig = field(default_factory=NetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    slices: SliceConfig = field(default_factory=SliceConfig)
    rela_impr_baselines: tuple[str, ...] = ("dcn", "historical_ctr")  # <split>/rela_impr_vs_<name>
    # The production model every other is measured against: test/oracle_gap_closed (share of its gap to the
    # oracle closed) and test/auc_gain_vs_<baseline>[/<slice>] (mean ± std over paired seeds, and a paired
    # request-bootstrap 95% interval on seed 0's test scores: _ci_low / _ci_high; bootstrap_samples 0 = none).
    baseline: str = "dcn"
    gain_slices: tuple[str, ...] = ("query_tail", "product_new", "user_history", "product_history")
    bootstrap_samples: int = 200
    export_model: str | None = "dashclip_two_tower"  # "" or null = export nothing
    export_dir: str = "exports"
    checkpoint_dir: str = ""  # "" = <data>/checkpoints/ranking; then <name>/<model>/seed<k>/
    experiment: str = EXPERIMENT
    threads: int = 0  # TensorFlow intra-op threads (0 = all cores)
    plots: bool = True

    def validate(self) -> None:
        unknown = [m for m in self.models if m not in KNOWN_MODELS]
        if unknown:
            raise ConfigError(f"models: unknown model(s) {', '.join(unknown)} (known: {', '.join(KNOWN_MODELS)})")
        if not self.models or len(set(self.models)) != len(self.models):
            raise ConfigError("models: list each model once, at least one")
        if self.seeds < 1:
            raise ConfigError("seeds must be >= 1")
        if self.export_model and self.export_model not in self.models:
            raise ConfigError(f"export_model '{self.export_model}' is not among models {list(self.models)}")
        unknown = [s for s in self.gain_slices if not re.fullmatch(SLICE_PATTERN, s)]
        if unknown:
            raise ConfigError(f"gain_slices: unknown slice(s) {', '.join(unknown)} (known: {SLICE_NAMES})")
        if self.bootstrap_samples < 0:
            raise ConfigError("bootstrap_samples must be >= 0 (0 = no intervals)")
        check_at_least("", self, 0, "max_rows", "eval_train_rows", "threads")
        check_folder_name("RankingConfig", "name", self.name)  # checkpoints go to <checkpoint_dir>/<name>/
        if self.export_model and self.export_model not in NEURAL:
            raise ConfigError(f"export_model '{self.export_model}' is a baseline; only neural models export")
