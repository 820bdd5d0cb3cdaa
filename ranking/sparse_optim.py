"""Row-sparse optimizers for the fused id-embedding table (docs/design.md, section 10).

Keras optimizers (Adam, even plain SGD) sweep every row of an embedding table on every step. With a 100k-row
table that sweep costs more than the model's matmuls. The gradient of `tf.gather(table, ids)` is an
IndexedSlices over the rows the batch touched, so these optimizers update only those rows with scatter ops:

- `sgd`: table[rows] -= lr * g (duplicates add up, as the dense gradient would);
- `adagrad`: per-row accumulators, the classic optimizer for sparse ids;
- `lazy_adam`: Adam moments read, updated and written back for the touched rows only (TF-Addons' LazyAdam).

The learning rate is a variable so learning-rate decay on plateau reaches it, and the slots are variables created
up front, so `tf.train.Checkpoint` restores them directly. Under tf.distribute (ranking/distribute.py) every
replica applies the same, already summed gradient to its own copy of the table and slots.
"""

from __future__ import annotations

from ranking.tf_legacy_keras import tf

KINDS = ("lazy_adam", "adagrad", "sgd")


def gather_rows(variable: tf.Variable, rows):
    """variable[rows], read in place. For a mirrored variable (tf.distribute) this replica's copy is read:
    tf.gather would read the whole mirrored variable first, a full copy of the table per step."""
    if isinstance(variable, tf.distribute.DistributedValues):
        variable = variable._get_on_device_or_primary()
    return tf.gather(variable, rows)


class RowSparseOptimizer(tf.Module):
    """Applies an IndexedSlices gradient to the rows of one table variable it touches."""

    def __init__(self, kind: str, table: tf.Variable, learning_rate: float, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, initial_accumulator: float = 0.1,
                 name: str = "table_optimizer"):
        super().__init__(name=name)
        if kind not in KINDS:
            raise ValueError(f"unknown table optimizer {kind!r} (choose from {', '.join(KINDS)})")
        self.kind = kind
        self.learning_rate = tf.Variable(learning_rate, trainable=False, dtype=tf.float32, name="learning_rate")
        self.iterations = tf.Variable(0, trainable=False, dtype=tf.int64, name="iterations")
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        shape, dtype = table.shape, table.dtype
        if kind == "lazy_adam":
            self.m = tf.Variable(tf.zeros(shape, dtype), trainable=False, name="m")
            self.v = tf.Variable(tf.zeros(shape, dtype), trainable=False, name="v")
        elif kind == "adagrad":
            self.accumulator = tf.Variable(tf.fill(shape, tf.constant(initial_accumulator, dtype)),
                                           trainable=False, name="accumulator")

    def apply(self, grad, table: tf.Variable) -> None:
        if not isinstance(grad, tf.IndexedSlices):
            raise TypeError("the id table's gradient is dense: the table must only be read through tf.gather")
        self.iterations.assign_add(1)
        if self.kind == "sgd":
            # scatter_sub adds duplicate rows up, exactly as the dense gradient would.
            table.scatter_sub(tf.IndexedSlices(self.learning_rate * grad.values, grad.indices))
            return
        # Sum the gradient of rows that occur several times in the batch: [U, d] over U unique rows.
        rows, position = tf.unique(grad.indices)
        g = tf.math.unsorted_segment_sum(grad.values, position, tf.shape(rows)[0])
        if self.kind == "adagrad":
            acc = gather_rows(self.accumulator, rows) + tf.square(g)
            self.accumulator.scatter_update(tf.IndexedSlices(acc, rows))
            table.scatter_sub(tf.IndexedSlices(self.learning_rate * g * tf.math.rsqrt(acc), rows))
            return
        t = tf.cast(self.iterations, tf.float32)
        m = self.beta_1 * gather_rows(self.m, rows) + (1.0 - self.beta_1) * g
        v = self.beta_2 * gather_rows(self.v, rows) + (1.0 - self.beta_2) * tf.square(g)
        self.m.scatter_update(tf.IndexedSlices(m, rows))
        self.v.scatter_update(tf.IndexedSlices(v, rows))
        lr = self.learning_rate * tf.sqrt(1.0 - tf.pow(self.beta_2, t)) / (1.0 - tf.pow(self.beta_1, t))
        table.scatter_sub(tf.IndexedSlices(lr * m / (tf.sqrt(v) + self.epsilon), rows))
