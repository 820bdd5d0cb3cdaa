"""The pCTR models, top to bottom: the feature encoder, tower A (DCN), tower B (DashCLIP), the heads.

    dcn                            tower A alone: the production ranker
    dashclip_two_tower             tower A + tower B -> concat -> FC layers -> sigmoid (docs/design.md, section 6)
    dashclip_two_tower_no_history  the same without the purchase-history embedding and cos(p, history)
    dcn_dashclip_concat            one tower: tower B's features concatenated into the DCN input

Inputs are raw named features (ids as int64 or strings, dense float32, embeddings float32 [B, E]); vocabularies
and normalisation (ranking/preprocessing.py, fitted on train) live inside the model, so a SavedModel serves raw
values:

    ids   [B] x F   --lookup (train vocab, OOV buckets; id dropout to OOV when training) + offset-->
                    fused ids [B, F]  --gather-->  [B, F, d]
    dense [B] x D   --impute, signed log1p, smoothed CTR logits, standardise, clip-->  [B, D']
    tower A:  x0 = concat(flatten ids [B, F*d], dense [B, D'])  -> cross layers  ||  deep layers  -> [B, H_a]
    tower B:  embed_p = P(product), embed_q = Q(query), embed_h = P(history)     (P shared: history is a mean of
              product embeddings, so it lives in the product space), cos(p, q), cos(p, h) on the raw vectors
    head:     concat(tower A, tower B) -> FC layers -> logit [B];   P(click) = sigmoid(a * logit + b)
              (a, b: Platt calibration on the validation split after training, ranking/fit.py)

All id features share ONE embedding table (each feature owns a row range): one gather per batch and one sparse
update per step. The training step updates that table row-sparsely (ranking/sparse_optim.py) while the dense
layers use Adam; with Keras's optimizers the full-table update dominated the step (docs/design.md, section 10).
Loss and metrics go through a `tfrs.tasks.Ranking` task.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ranking.config import MODEL_KINDS, NetConfig
from ranking.distribute import sum_over_replicas, sum_row_gradients
from ranking.pipeline import input_signature
from ranking.preprocessing import Preprocessing
from ranking.sparse_optim import gather_rows
from ranking.tf_legacy_keras import tf, tfrs
from ranking.training_set import FeatureSpec

# ---------------------------------------------------------------------------------------------------------------
# 1. Layers: raw features -> fused ids and normalised dense; the id table; tower A; tower B.


def _mix32(h):
    """murmur3's 32-bit finaliser on uint32 tensors: a bijection that spreads every input bit over the output."""
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16)) * tf.constant(0x85EBCA6B, tf.uint32)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 13)) * tf.constant(0xC2B2AE35, tf.uint32)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))


def id_dropout_draws(local_ids, step, seed: int):
    """Uniform draws in [0, 1) [B, F], one per id, that depend only on (seed, training step, the row's ids, the
    feature): no random state. So a row gets the same draws whichever worker trains on it, and a run on several
    workers drops the ids one worker would have dropped (a stateful generator would draw per worker)."""
    features = local_ids.shape[1]
    salt = _mix32(tf.cast(tf.range(1, features + 1), tf.uint32) * tf.constant(0x9E3779B9, tf.uint32))  # [F]
    xor = tf.bitwise.bitwise_xor
    key = _mix32(xor(tf.cast(local_ids, tf.uint32), salt))  # [B, F]: each id hashed with its feature
    row = tf.reduce_sum(key, axis=1, keepdims=True)  # [B, 1], wraps mod 2^32: the row's fingerprint
    step_key = _mix32(xor(tf.cast(step, tf.uint32), tf.constant(seed & 0xFFFFFFFF, tf.uint32)))
    draws = _mix32(xor(_mix32(xor(row, step_key)), salt))  # [B, F]
    return tf.cast(tf.bitwise.right_shift(draws, 8), tf.float32) / 2.0 ** 24


class FeatureEncoder(tf.keras.layers.Layer):
    """Raw inputs -> (fused ids [B, F] int64, dense [B, D'] float32), with the train vocabularies and statistics."""

    def __init__(self, spec: FeatureSpec, prep: Preprocessing, id_dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.spec, self.prep, self.id_dropout = spec, prep, id_dropout
        self.dropout_seed = int(np.random.randint(2**31))  # from the seed of set_random_seed
        self.lookups, offsets, total = [], [], 0
        for name in spec.ids:
            vocab = prep.vocabularies[name]
            if name in spec.str_ids:
                layer = tf.keras.layers.StringLookup(vocabulary=vocab, num_oov_indices=prep.oov_buckets,
                                                     name=f"lookup_{name}")
            else:
                layer = tf.keras.layers.IntegerLookup(vocabulary=np.array(vocab, dtype=np.int64),
                                                      num_oov_indices=prep.oov_buckets, name=f"lookup_{name}")
            self.lookups.append(layer)
            offsets.append(total)
            total += len(vocab) + prep.oov_buckets  # this feature's row range in the fused table
        self.offsets = offsets
        self.table_rows = total
        self.mean = tf.constant(prep.mean, tf.float32)
        self.std = tf.constant(prep.std, tf.float32)

    def call(self, inputs, training=False, step=0):
        ids = [tf.cast(lookup(inputs[name]), tf.int64) for name, lookup in zip(self.spec.ids, self.lookups)]
        local = tf.stack(ids, axis=1)  # [B, F], per-feature indices; 0..oov_buckets-1 are the OOV rows
        if training and self.id_dropout:
            # Send a random share of the ids to their OOV row, so the OOV rows learn what an unseen id (a new
            # product, a tail query) looks like; otherwise they keep their random initial values. The draws
            # change with `step` (train_step passes the optimizer's step count).
            dropped = id_dropout_draws(local, step, self.dropout_seed) < self.id_dropout
            local = tf.where(dropped, tf.zeros_like(local), local)
        fused = local + tf.constant(self.offsets, tf.int64)  # [B, F] rows of the fused table
        columns = {}
        for name in self.spec.dense:
            x = tf.cast(inputs[name], tf.float32)  # [B]
            if name in self.prep.impute:
                x = tf.where(tf.math.is_nan(x), tf.constant(self.prep.impute[name], tf.float32), x)
            columns[name] = x
        dense = [tf.sign(columns[n]) * tf.math.log1p(tf.abs(columns[n])) if n in self.spec.log_dense
                 else columns[n] for n in self.spec.dense]
        prior, base = self.prep.ctr_prior_strength, self.prep.base_rate
        for _, clicks, imps in self.spec.ctr_pairs:
            ctr = (columns[clicks] + prior * base) / (tf.maximum(columns[imps], 0.0) + prior)
            ctr = tf.clip_by_value(ctr, 1e-6, 1 - 1e-6)
            dense.append(tf.math.log(ctr / (1 - ctr)))
        if dense:
            dense = (tf.stack(dense, axis=1) - self.mean) / self.std  # [B, D']
            dense = tf.clip_by_value(dense, -self.prep.clip, self.prep.clip)
        else:
            dense = tf.zeros([tf.shape(fused)[0], 0])
        return fused, dense


class FusedIdEmbedding(tf.keras.layers.Layer):
    """One [rows, d] table for every id feature; read only through tf.gather so its gradient stays row-sparse."""

    def __init__(self, rows: int, dim: int, initializer: str = "random_uniform", scale: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.rows, self.dim = rows, dim
        self.initializer, self.scale = initializer, scale

    def build(self, input_shape):
        self.table = self.add_weight(
            name="fused_id_table", shape=[self.rows, self.dim],
            initializer=embedding_initializer(self.initializer, self.scale), trainable=True)

    def call(self, fused_ids):
        # In place, also for a mirrored table (tf.distribute): tf.gather would copy it whole every step (measured:
        # most of a multi-worker step).
        return gather_rows(self.table, fused_ids)  # [B, F] -> [B, F, d]


def embedding_initializer(name: str, scale: float):
    """NetConfig.embedding_initializer as a Keras initializer."""
    if name == "random_uniform":
        return tf.keras.initializers.RandomUniform(-scale, scale)
    if name == "random_normal":
        return tf.keras.initializers.RandomNormal(0.0, scale)
    if name == "truncated_normal":
        return tf.keras.initializers.TruncatedNormal(0.0, scale)
    return tf.keras.initializers.GlorotUniform()


class VectorCross(tf.keras.layers.Layer):
    """The original DCN's cross layer (Wang et al. 2017): x_{l+1} = x0 * (x_l . w) + b + x_l, w and b [D0]."""

    def __init__(self, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.kernel_initializer = kernel_initializer

    def build(self, input_shape):
        d = int(input_shape[-1])
        self.w = self.add_weight(name="kernel", shape=[d, 1], initializer=self.kernel_initializer, trainable=True)
        self.b = self.add_weight(name="bias", shape=[d], initializer="zeros", trainable=True)

    def call(self, x0, x=None):
        x = x0 if x is None else x
        return x0 * tf.matmul(x, self.w) + self.b + x  # [B, D0] * [B, 1]


class StepDropout(tf.keras.layers.Layer):
    """Dropout whose mask is a function of (this layer's seed, the training step) alone: no generator state, so a
    run resumed from a checkpoint draws the masks the uninterrupted run drew (Keras's Dropout draws from a
    generator the checkpoint does not hold). Inverted scaling as in Keras: kept units are divided by 1 - rate.
    Each replica draws for the rows of its own batch, so under tf.distribute the masks are per worker."""

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed = int(np.random.randint(2**31))  # from the seed of set_random_seed, like the id-dropout seed

    def call(self, x, training=False, step=0):
        if not training or not self.rate:
            return x
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        keep = tf.random.stateless_uniform(tf.shape(x), seed=seed) >= self.rate
        return tf.where(keep, x / (1.0 - self.rate), tf.zeros_like(x))


def _mlp(widths: tuple[int, ...], dropout: float, name: str,
         initializer: str = "glorot_uniform") -> tf.keras.Sequential | None:
    """ReLU layers of the given widths (None for no layers), each followed by StepDropout when dropout > 0. Run it
    with run_mlp, which passes the training step to the dropout layers."""
    if not widths:
        return None
    layers = []
    for i, units in enumerate(widths):
        layers.append(tf.keras.layers.Dense(units, activation="relu", kernel_initializer=initializer,
                                            name=f"{name}_{i}"))
        if dropout:
            layers.append(StepDropout(dropout, name=f"{name}_dropout_{i}"))
    return tf.keras.Sequential(layers, name=name)


def run_mlp(mlp: tf.keras.Sequential, x, training=False, step=0):
    """mlp(x), layer by layer so that each StepDropout gets the step (a Sequential passes only `training`)."""
    if not mlp.built:  # what the Sequential's own first call would do: its weights are then the model's
        mlp.build(x.shape)
    for layer in mlp.layers:
        x = layer(x, training=training, step=step) if isinstance(layer, StepDropout) else layer(x)
    return x


class DCNTower(tf.keras.layers.Layer):
    """Tower A: x0 [B, D0] -> cross network (x_{l+1} = x0 * (W x_l + b) + x_l) and a deep network -> [B, H_a]."""

    def __init__(self, net: NetConfig, **kwargs):
        super().__init__(**kwargs)
        rank = net.cross_projection_dim or None
        if net.cross_type == "vector":
            self.crosses = [VectorCross(kernel_initializer=net.dense_initializer, name=f"cross_{i}")
                            for i in range(net.cross_layers)]
        else:
            self.crosses = [tfrs.layers.dcn.Cross(projection_dim=rank, kernel_initializer=net.dense_initializer,
                                                  name=f"cross_{i}") for i in range(net.cross_layers)]
        self.deep = _mlp(net.deep_layers, net.dropout, "deep", net.dense_initializer)
        self.structure = net.structure

    def call(self, x0, training=False, step=0):
        x = x0
        for cross in self.crosses:
            x = cross(x0, x)  # [B, D0]
        if self.deep is None:
            return x  # [B, D0]: a pure cross network
        if self.structure == "stacked":
            return run_mlp(self.deep, x, training, step)  # [B, deep_layers[-1]]
        return tf.concat([x, run_mlp(self.deep, x0, training, step)], axis=1)  # [B, D0 + deep_layers[-1]]


def _cosine(a, b):
    """cos(a, b) per row [B, 1]; 0 where either vector is zero (unknown product / no history)."""
    dot = tf.reduce_sum(a * b, axis=1, keepdims=True)
    norms = tf.norm(a, axis=1, keepdims=True) * tf.norm(b, axis=1, keepdims=True)
    return tf.math.divide_no_nan(dot, norms)


class DashClipTower(tf.keras.layers.Layer):
    """Tower B: embed_p, embed_q (and embed_h), cos(p, q) (and cos(p, h), has-history) -> [B, H_b]."""

    def __init__(self, net: NetConfig, embedding_dim: int, history: bool, **kwargs):
        super().__init__(**kwargs)
        self.history = history
        self.scale = math.sqrt(embedding_dim)  # unit-norm vectors -> components of unit variance
        self.product_proj = tf.keras.layers.Dense(net.content_projection_dim, name="embed_p")
        self.query_proj = tf.keras.layers.Dense(net.content_projection_dim, name="embed_q")

    def call(self, product, query, history):
        parts = [self.product_proj(product * self.scale), self.query_proj(query * self.scale),
                 _cosine(product, query)]
        if self.history:
            has_history = tf.cast(tf.reduce_any(history != 0.0, axis=1, keepdims=True), tf.float32)  # [B, 1]
            parts += [self.product_proj(history * self.scale), _cosine(product, history), has_history]
        return tf.concat(parts, axis=1)  # [B, 2P + 1] or [B, 3P + 3]


# ---------------------------------------------------------------------------------------------------------------
# 2. The model: wires the towers; the Ranking task owns loss and metrics; train_step updates the table sparsely.


class PCTRModel(tfrs.models.Model):
    """A pCTR model over raw named features; `model(features)` returns logits [B]."""

    def __init__(self, kind: str, spec: FeatureSpec, prep: Preprocessing, net: NetConfig, **kwargs):
        super().__init__(name=kind, **kwargs)
        if kind not in MODEL_KINDS:
            raise ValueError(f"unknown model {kind!r} (known: {', '.join(MODEL_KINDS)})")
        self.kind, self.spec, self.prep, self.net = kind, spec, prep, net
        self.content = MODEL_KINDS[kind]["content"]
        if self.content != "none" and not spec.embeddings:
            raise ValueError(f"model {kind!r} needs the DashCLIP embedding columns")
        self.encoder = FeatureEncoder(spec, prep, net.id_dropout, name="encoder")
        self.id_embedding = FusedIdEmbedding(self.encoder.table_rows, net.id_embedding_dim, net.embedding_initializer,
                                             net.embedding_init_scale, name="id_embedding")
        self.tower_a = DCNTower(net, name="tower_a")
        self.tower_b = None
        if self.content != "none":
            self.tower_b = DashClipTower(net, spec.embedding_dim, MODEL_KINDS[kind]["history"], name="tower_b")
        self.content_mlp = (_mlp(net.content_layers, net.dropout, "content_layers", net.dense_initializer)
                            if self.content == "tower" else None)
        self.head = _mlp(net.head_layers, net.dropout, "head", net.dense_initializer) if self.content == "tower" else None
        base = min(max(prep.base_rate, 1e-4), 1 - 1e-4)
        self.logit_layer = tf.keras.layers.Dense(
            1, name="logit", bias_initializer=tf.keras.initializers.Constant(math.log(base / (1 - base))))
        # A summed loss, divided by the batch's row count in compute_loss: under tf.distribute that count is the
        # global batch's, so the replicas' gradients add up to the single-process gradient.
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(from_logits=True, reduction=tf.keras.losses.Reduction.SUM),
            metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc")])
        # logit -> a * logit + b at inference, fitted on the validation split after training (identity before).
        self.calibration = tf.Variable([1.0, 0.0], trainable=False, name="calibration")
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")  # the epoch's mean loss (Keras resets it per epoch)
        self.table_optimizer = None  # set by ranking.fit.compile_model
        self._logits_fn = None  # predict_logits's compiled call, made at its first use
        self.replica_batch_rows = 0  # the most rows one replica's batch can hold (set by ranking.fit.compile_model)

    def forward(self, inputs, training=False, step=0):
        """(logits [B], the id-embedding rows used [B, F, d]); `step` keys the id-dropout and dropout draws when
        training."""
        fused, dense = self.encoder(inputs, training=training, step=step)
        rows = self.id_embedding(fused)  # [B, F, d]
        x0 = tf.concat([tf.reshape(rows, [-1, rows.shape[1] * rows.shape[2]]), dense], axis=1)  # [B, F*d + D']
        content = None
        if self.tower_b is not None:
            p, q, h = (inputs[name] for name in self.spec.embeddings)
            content = self.tower_b(p, q, h)
        if self.content == "concat":
            x0 = tf.concat([x0, content], axis=1)
        x = self.tower_a(x0, training=training, step=step)
        if self.content == "tower":
            if self.content_mlp is not None:
                content = run_mlp(self.content_mlp, content, training, step)
            x = tf.concat([x, content], axis=1)  # [B, H_a + H_b]
            if self.head is not None:
                x = run_mlp(self.head, x, training, step)
        return tf.squeeze(self.logit_layer(x), axis=1), rows

    def call(self, inputs, training=False):
        """Calibrated logits [B] (the training loss uses forward's raw logits)."""
        return self.forward(inputs, training=training)[0] * self.calibration[0] + self.calibration[1]

    def predict_logits(self, dataset) -> np.ndarray:
        """Calibrated logits [n] of every batch of `dataset`, in order. A compiled call per batch rather than Keras's
        predict, which under a multi-worker strategy would split the batches over the workers: this reads the
        local copy of the weights and gives every worker (and a single process) the same whole answer."""
        if self._logits_fn is None:
            signature = {name: input_signature(self.spec, name) for name in self.spec.inputs}  # any batch length
            # A partial rather than a lambda: TensorFlow counts traces per code object, and every new model
            # tracing its own function once would read as "excessive retracing".
            self._logits_fn = tf.function(functools.partial(PCTRModel._inference, self), input_signature=[signature])
        return np.concatenate([self._logits_fn(features).numpy() for features in dataset] or [np.zeros(0)])

    def _inference(self, features):
        return self(features, training=False)

    def compute_loss(self, inputs, training=False, batch_rows=None, step=0):
        """The batch's summed loss over `batch_rows` (default: this batch's rows; in training, the global batch's)."""
        features, labels = inputs
        logits, rows = self.forward(features, training=training, step=step)
        if batch_rows is None:
            batch_rows = tf.cast(tf.shape(labels)[0], tf.float32)
        loss = self.task(labels=labels[:, None], predictions=logits[:, None], training=training,
                         compute_metrics=not training)
        if self.net.embedding_l2:
            loss += self.net.embedding_l2 * tf.reduce_sum(tf.square(rows))
        return tf.math.divide_no_nan(loss, batch_rows)

    def train_step(self, inputs):
        """One step on this replica's share of the global batch. Under tf.distribute, Keras's optimizer all-reduces
        the dense gradients and sum_row_gradients gathers the id table's, so every replica applies the same
        row-sparse update to its copy of the table (ranking/distribute.py)."""
        table = self.id_embedding.table
        sparse = self.table_optimizer is not None
        batch_rows = sum_over_replicas(tf.cast(tf.shape(inputs[1])[0], tf.float32))
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True, batch_rows=batch_rows, step=self.optimizer.iterations)
            # regularisation losses are per replica: scaled so that their sum over replicas counts once
            total = loss + tf.nn.scale_regularization_loss(tf.add_n(self.losses)) if self.losses else loss
        variables = [v for v in self.trainable_variables if not (sparse and v is table)]
        if sparse:  # the table last: its gradient is an IndexedSlices over the rows this batch used
            grads = tape.gradient(total, variables + [table])
            self.optimizer.apply_gradients(zip(grads[:-1], variables))
            capacity = self.replica_batch_rows * len(self.spec.ids)  # (row, feature) pairs of a replica's batch
            self.table_optimizer.apply(sum_row_gradients(grads[-1], capacity), table)
        else:  # Keras's optimizer on everything (sweeps the whole table: for comparison only)
            grads = tape.gradient(total, variables)
            self.optimizer.apply_gradients(zip(grads, variables))
        # this replica's share of the global batch's mean loss: Keras sums the replicas' logs (its 'auto' reduction)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


def build_model(kind: str, spec: FeatureSpec, prep: Preprocessing, net: NetConfig) -> PCTRModel:
    """A built model (weights created by one call on an empty batch)."""
    model = PCTRModel(kind, spec, prep, net)
    model(empty_batch(spec))
    return model


def empty_batch(spec: FeatureSpec) -> dict:
    """A zero-row batch of every raw input, with the right dtypes and shapes."""
    batch = {}
    for name in spec.int_ids:
        batch[name] = tf.zeros([0], tf.int64)
    for name in spec.str_ids:
        batch[name] = tf.zeros([0], tf.string)
    for name in spec.dense:
        batch[name] = tf.zeros([0], tf.float32)
    for name in spec.embeddings:
        batch[name] = tf.zeros([0, spec.embedding_dim], tf.float32)
    return batch


def matmul_flops_per_example(model: PCTRModel) -> int:
    """Training FLOPs per example in matmuls: 2 per weight forward, 4 more backward (input and weight grads).

    Counts every 2-D kernel except the id table (a gather, not a matmul); elementwise work is left out.
    """
    table = model.id_embedding.table
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables if len(v.shape) == 2 and v is not table)
    return 6 * params
