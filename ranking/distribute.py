"""Data-parallel training of the pCTR models with tf.distribute: the `train.strategy` key (docs/scaling.md).

    default        one process, TensorFlow's default strategy (no replicas, no collectives)
    mirrored       MirroredStrategy: one replica per local GPU (the CPU when there is none), one process
    multi_worker   MultiWorkerMirroredStrategy over the cluster in TF_CONFIG: one process per worker, each with
                   its local replicas; gradients are all-reduced with collectives (ring on CPU, NCCL on GPU)

Every worker keeps a full copy of the model (the id table included) and trains on its own share of each global
batch (`shard`). What crosses the network per step: the dense gradients (Keras's optimizer all-reduces them), the
id table's gradient as IndexedSlices (`sum_row_gradients`: every replica's touched rows and their gradients,
gathered, so the table update stays row-sparse; every replica then applies the same sum to its copy), and the
global batch's row count (the loss is divided by it). Per epoch, the validation AUC (`agree`).

    make_strategy(kind)         -> tf.distribute.Strategy; multi_worker must be made before any other TF op
    worker(strategy)            -> (this worker's index, number of workers)
    is_chief(strategy)          the one worker that writes checkpoints and logs to MLflow
    input_replicas(context)     (first, count, total): the replicas one input pipeline feeds
    shard(rows, index, count)   replica `index`'s rows of one global batch
    sum_over_replicas(x)        all-reduce SUM in replica context (identity with one replica)
    sum_row_gradients(grad, capacity)   the same for an IndexedSlices gradient, refusing a dense result
    agree(strategy, x)          one worker's float on every worker (decisions that must not diverge)
"""

from __future__ import annotations

import json
import os

import numpy as np

from core.config import ConfigError
from ranking.tf_legacy_keras import tf

STRATEGIES = ("default", "mirrored", "multi_worker")
PACK_BYTES = 64 << 20  # dense gradients all-reduced together, up to this many bytes per collective


def check_tf_config(environ=os.environ) -> dict:
    """TF_CONFIG parsed and checked: a cluster with `worker` (and optionally one `chief`) addresses, and this
    process's task among them. ConfigError naming what is wrong otherwise."""
    text = environ.get("TF_CONFIG", "")
    if not text:
        raise ConfigError("train.strategy=multi_worker needs TF_CONFIG (the cluster and this process's task), "
                          "e.g. {\"cluster\": {\"worker\": [\"host1:12345\", \"host2:12345\"]}, "
                          "\"task\": {\"type\": \"worker\", \"index\": 0}}")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {e}") from None
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster.get("worker") and not cluster.get("chief"):
        raise ConfigError("TF_CONFIG: 'cluster' must list the workers' host:port addresses under 'worker'")
    unknown = set(cluster) - {"chief", "worker"}
    if unknown:
        raise ConfigError(f"TF_CONFIG: cluster job(s) {', '.join(sorted(unknown))} are not used by "
                          f"MultiWorkerMirroredStrategy (only 'chief' and 'worker')")
    if not isinstance(task, dict) or task.get("type") not in cluster or \
            not isinstance(task.get("index"), int) or not 0 <= task["index"] < len(cluster[task["type"]]):
        raise ConfigError(f"TF_CONFIG: 'task' must name this process's job and index in the cluster, "
                          f"got {task!r}")
    return config


def make_strategy(kind: str) -> tf.distribute.Strategy:
    """The strategy `train.strategy` names. MultiWorkerMirroredStrategy configures TensorFlow's collectives, which
    TensorFlow allows only before it runs its first op: build it at the start of the program."""
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":
        check_tf_config()
        # One collective for all the dense gradients of a step instead of one per variable: on CPU each is a ring
        # of gRPC round trips, and their fixed cost, not the bytes, dominates for a model of this size.
        options = tf.distribute.experimental.CommunicationOptions(bytes_per_pack=PACK_BYTES)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise ConfigError(f"train.strategy: unknown '{kind}' (choose from {', '.join(STRATEGIES)})")


def worker(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(index of this worker, number of workers): the chief first, then the workers in TF_CONFIG order."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return 0, 1
    jobs = resolver.cluster_spec().as_dict()
    chiefs, workers = len(jobs.get("chief", [])), len(jobs.get("worker", []))
    if not resolver.task_type:  # MultiWorkerMirroredStrategy without TF_CONFIG: local devices only
        return 0, 1
    index = resolver.task_id if resolver.task_type == "chief" else chiefs + resolver.task_id
    return index, chiefs + workers


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints, exports and MLflow runs (the only one without a cluster)."""
    return strategy.extended.should_checkpoint


def input_replicas(context: tf.distribute.InputContext) -> tuple[int, int, int]:
    """(first replica, local replicas, all replicas) of the input pipeline `context` describes: one pipeline per
    worker, feeding its local replicas in turn (strategy.distribute_datasets_from_function)."""
    local = context.num_replicas_in_sync // context.num_input_pipelines
    return context.input_pipeline_id * local, local, context.num_replicas_in_sync


def shard(rows: np.ndarray, index: int, count: int) -> np.ndarray:
    """Replica `index`'s contiguous share of one global batch's rows. When the batch does not divide by `count`,
    the first len(rows) % count replicas take one row more: every replica runs the same number of steps, and the
    loss is divided by the global batch's row count (not the local one), so the summed gradient is the
    single-process gradient of the whole batch."""
    return np.array_split(rows, count)[index]


def _replicas() -> int:
    ctx = tf.distribute.get_replica_context()
    return 1 if ctx is None else ctx.num_replicas_in_sync


def sum_over_replicas(x):
    """SUM of a tensor over every replica of every worker, in a replica context (train_step); x itself with one."""
    if _replicas() == 1:
        return x
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, x)


def sum_row_gradients(grad: tf.IndexedSlices, capacity: int) -> tf.IndexedSlices:
    """The id table's gradient summed over replicas, still row-sparse: tf.distribute reduces IndexedSlices by
    gathering every replica's (indices, values) and concatenating them, so a row that several replicas touched
    appears several times and the optimizer adds its pieces up (tf.unique + segment sum, or scatter_sub).
    Raises rather than hand the optimizer a dense [rows, d] gradient.

    Each replica first pads its pairs to `capacity` (the most a replica's batch can hold) with a row index past
    the table's end, dropped again after the exchange: the gathered tensors then have one shape on every replica
    and at every step. TensorFlow's collectives require that inside Keras's multi-step loop (steps_per_execution),
    where a shorter last batch otherwise aborts with "Shape mismatch in the collective instance"."""
    if not isinstance(grad, tf.IndexedSlices):
        raise TypeError("the id table's gradient is dense: the table must only be read through tf.gather")
    if _replicas() == 1:
        return grad
    table_rows = tf.cast(grad.dense_shape[0], grad.indices.dtype)
    length = tf.shape(grad.indices)[0]
    with tf.control_dependencies([tf.debugging.assert_less_equal(length, capacity, message="rows per replica")]):
        pad = capacity - length
    indices = tf.ensure_shape(tf.concat([grad.indices, tf.fill([pad], table_rows)], 0), [capacity])
    values = tf.ensure_shape(tf.pad(grad.values, [[0, pad], [0, 0]]), [capacity, grad.values.shape[1]])
    summed = sum_over_replicas(tf.IndexedSlices(values, indices, grad.dense_shape))
    if not isinstance(summed, tf.IndexedSlices):
        raise TypeError(f"the cross-replica sum of the id table's gradient came back dense "
                        f"({type(summed).__name__}); refusing a dense sweep of the table")
    real = summed.indices < table_rows
    return tf.IndexedSlices(tf.boolean_mask(summed.values, real), tf.boolean_mask(summed.indices, real),
                            grad.dense_shape)


def agree(strategy: tf.distribute.Strategy, x: float) -> float:
    """The value that the worker holding replica 0 computed, on every worker: the validation AUC behind early
    stopping and learning-rate decay must be the same number everywhere, or one worker stops while the others
    wait in a collective. Identity without a cluster."""
    if worker(strategy)[1] == 1:
        return x
    return float(_first_replica_value(strategy, tf.constant(x, tf.float64)))


def _first_replica_keeps(value):
    ctx = tf.distribute.get_replica_context()
    return tf.where(ctx.replica_id_in_sync_group == 0, value, tf.zeros_like(value))


@tf.function  # one trace per strategy; collectives run eagerly are slow, and TensorFlow warns about each
def _first_replica_value(strategy, value):
    return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(_first_replica_keeps, args=(value,)), axis=None)
