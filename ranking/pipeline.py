"""Training-set splits -> tf.data batches for the neural models, and the tf.TensorSpec of each raw input.

`make_dataset` turns a split (ranking.training_set.Split) into a `tf.data.Dataset` of whole batches: a fresh
permutation per epoch (shuffle before batching), then parallel gathers of every column of the batch from
tf.Variables, then prefetch: no per-row Python. Under tf.distribute each replica gets its own share of every
global batch (`replicas`, ranking.distribute.shard), so the replicas together train on the batches one process
would.
"""

from __future__ import annotations

import numpy as np

from ranking.distribute import shard
from ranking.tf_legacy_keras import tf
from ranking.training_set import FeatureSpec, Split


def split_columns(split: Split, spec: FeatureSpec) -> dict:
    """The split's model inputs as tf.Variables, made once: the pipeline gathers batches from them in C++ threads.

    Variables rather than captured constants: tf.data copies a captured tensor into every dataset built from
    it (each validation pass would copy the split), while a variable is shared by reference. They must be made
    outside a tf.distribute scope (Keras's fit is one), where they would become mirrored variables that worker 0
    broadcasts to the others: ranking.fit makes the validation split's before training.
    """
    if split.tf_variables is None:
        if tf.distribute.has_strategy():
            raise RuntimeError(f"the {split.name} split's columns must be loaded outside a tf.distribute strategy's "
                               f"scope (call ranking.pipeline.split_columns before entering it)")
        cols = {}
        with tf.device("/cpu:0"):
            # Same-dtype [n] columns (int64 ids, float32 dense features and the label) are stacked into one
            # [n, k] matrix each, so a batch is one gather per block instead of one per column.
            for block, names in _blocks(spec).items():
                values = [split.columns[name] for name in names]
                if block == "__float__":
                    values.append(split.labels.astype(np.float32))
                dtype = np.int64 if block == "__int64__" else np.float32
                matrix = np.stack(values, axis=1).astype(dtype, copy=False)  # [n, k]
                cols[block] = tf.Variable(matrix, trainable=False)
            for name in spec.str_ids:
                cols[name] = tf.Variable(split.columns[name], trainable=False)
            for name in spec.embeddings:
                v = split.columns[name]
                cols[name] = (tf.Variable(v.table, trainable=False), tf.Variable(v.index, trainable=False))
        split.tf_variables = cols
    return split.tf_variables


def _blocks(spec: FeatureSpec) -> dict[str, tuple[str, ...]]:
    """The stacked [n] columns: int64 ids, then float32 dense features (+ the label as the last column)."""
    return {**({"__int64__": spec.int_ids} if spec.int_ids else {}), "__float__": spec.dense}


def make_dataset(split: Split, spec: FeatureSpec, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 labels: bool = True, start_epoch: int = 0, replicas: tuple[int, int, int] = (0, 1, 1)):
    """A tf.data.Dataset of ({input: [B] or [B, dim]}, label [B] float32) batches over `split`.

    A Python generator yields only the row indices of each batch (sorted inside the batch, which keeps the
    gathers cache-friendly and changes nothing for the gradient); a map gathers every column from tf.Variables
    on the pipeline's own thread; prefetch overlaps it with training. With shuffle, each pass over the dataset
    (each Keras epoch) draws a new permutation from (seed, epoch), so a resumed run sees the same batches as an
    uninterrupted one. replicas=(first, count, total): `batch_size` is the global batch, cut into `total` shares
    (one per replica in the cluster); this dataset yields shares first .. first+count-1 of each, one after the
    other, which is how tf.distribute hands a worker's dataset to its `count` local replicas
    (strategy.distribute_datasets_from_function; ranking.distribute.input_replicas).
    """
    cols = split_columns(split, spec)
    n = len(split)
    epoch = [start_epoch]
    first, count, total = replicas

    def global_batches():
        if shuffle:
            order = np.random.default_rng([seed, epoch[0]]).permutation(n)
            epoch[0] += 1
            for start in range(0, n, batch_size):
                yield np.sort(order[start:start + batch_size])
        else:
            for start in range(0, n, batch_size):
                yield np.arange(start, min(start + batch_size, n), dtype=np.int64)

    def batch_rows():
        for rows in global_batches():
            for replica in range(first, first + count):
                yield shard(rows, replica, total)

    blocks = _blocks(spec)

    def gather(rows):
        features = {}
        for block, names in blocks.items():
            parts = tf.unstack(tf.gather(cols[block], rows), axis=1)  # k tensors [B]
            features.update(zip(names, parts))
            if block == "__float__":
                label = parts[-1]
        for name in spec.str_ids:
            features[name] = tf.gather(cols[name], rows)
        for name in spec.embeddings:
            table, index = cols[name]
            features[name] = tf.gather(table, tf.gather(index, rows))  # [B, dim]
        return (features, label) if labels else features

    ds = tf.data.Dataset.from_generator(batch_rows, output_signature=tf.TensorSpec([None], tf.int64))
    # The generator's length is known: Keras needs it when it runs several steps per call (steps_per_execution).
    ds = ds.apply(tf.data.experimental.assert_cardinality(-(-n // batch_size) * count))
    ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)
    # One private thread: it still delivers >10x the training rate, and on 2 cores a wider input pool steals
    # the training step's cores (measured: fit throughput halved in some windows).
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def input_signature(spec: FeatureSpec, name: str):
    """The tf.TensorSpec of one raw input: int64 / string ids [B], float32 dense [B], float32 embeddings [B, dim]."""
    if name in spec.int_ids:
        return tf.TensorSpec([None], tf.int64, name=name)
    if name in spec.str_ids:
        return tf.TensorSpec([None], tf.string, name=name)
    if name in spec.embeddings:
        return tf.TensorSpec([None, spec.embedding_dim], tf.float32, name=name)
    return tf.TensorSpec([None], tf.float32, name=name)
