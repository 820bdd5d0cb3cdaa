"""pCTR training speed: examples/s of `dcn` and `dashclip_two_tower` at batch 4096, the achieved GFLOP/s against
the machine's measured matmul roof, and the input pipeline alone (it must deliver >= 10x the training rate).

    python -m benchmarks.ranking_bench [--threads 2] [--rows 200000] [--steps 10] [--cross-ranks 0 64]
                                       [--optimizers lazy_adam sgd keras_adam]

The data is an in-memory synthetic training set of docs/design.md section 10's shape (26 int64 id features with
100k-value vocabularies -> one fused 2.6M x 16 table, 13 dense features, three 256-d embeddings of 50k products,
100k queries and 100k user histories), run through the
project's own pipeline (`ranking.pipeline.make_dataset`), models and training step (`PCTRModel.train_step`: Adam on
dense layers, row-sparse optimizer on the table). Results: one JSON line each, appended to
benchmarks/results/ranking.jsonl (benchmark, metric, value, unit, config, git_sha).

    matmul_gflops           the roof: the best of a few large float32 matmuls on the same threads
    input_examples_per_s    the tf.data pipeline alone (shuffled batches of 4096, every input)
    train_examples_per_s    model.fit over that pipeline (what a user gets)
    step_examples_per_s     the compiled train step on one cached batch (the step alone)
    train_gflops, roof_fraction   train_examples_per_s x matmul FLOPs per example, and its share of the roof
    step_roof_fraction      the same share for the step alone
    step_op_ms_<kind>       where the step's time goes (TF profiler, op time per step summed over the compute
                            threads): matmul, gather_scatter (table gather and the row-sparse update), lookup
                            (vocabularies), other (elementwise, concat/slice, reductions); --no-profile skips it
Two architectures: the default full-rank cross layers (the design's ~4.5-5 MFLOP per example shape) and the
low-rank option (rank 64: fewer FLOPs, more examples/s, a smaller share of the roof: the same per-example
overhead around fewer matmuls). Training runs with the project's TrainConfig (steps_per_execution included).

    python -m benchmarks.ranking_bench --scaling [--rows 200000] [--batch 4096] [--steps 16]

measures instead data-parallel training (train.strategy, ranking/distribute.py): the first of --models at the
first of --cross-ranks, the same synthetic data and GLOBAL batch, each configuration in fresh processes whose
intra- and inter-op thread pools are set at start-up:

    scaling_train_examples_per_s   model.fit examples/s (global batch x steps / seconds; best window, median too)
                                   for "1 worker x 1 thread", "1 worker x 2 threads" (strategy default) and
                                   "2 workers x 1 thread" (multi_worker: two processes on 127.0.0.1, TF_CONFIG)
    scaling_speedup                2 workers x 1 thread over 1 worker x 1 thread (target >= 1.6), and over
                                   1 worker x 2 threads (the same two cores used by threads instead of workers)
    scaling_efficiency             the first speedup / 2 workers
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import record
from ranking import distribute
from ranking.config import NetConfig, TrainConfig
from ranking.fit import compile_model
from ranking.models import build_model, matmul_flops_per_example
from ranking.pipeline import make_dataset
from ranking.preprocessing import Preprocessing
from ranking.tf_legacy_keras import tf
from ranking.training_set import Embeddings, FeatureSpec, Split, dense_features

# after ranking.tf_legacy_keras, which starts TensorFlow with tf-keras
from tensorflow.tsl.profiler.protobuf import xplane_pb2
from tests.helpers.ports import free_ports


def _setup_threads(threads: int) -> None:
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))


def matmul_roof(seconds: float = 3.0) -> float:
    """Best GFLOP/s of float32 matmuls (2048^3 and a model-like 4096x1024x1024) on the configured threads."""
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (4096, 1024, 1024)):
        a, b = tf.random.normal([m, k]), tf.random.normal([k, n])
        mm = tf.function(lambda a, b: tf.reduce_sum(tf.matmul(a, b)))
        mm(a, b).numpy()
        reps, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 2:
            mm(a, b).numpy()
            reps += 1
        best = max(best, 2.0 * m * k * n * reps / (time.perf_counter() - started) / 1e9)
    return best


def synthetic_data(rows: int, n_ids: int = 26, vocab: int = 100_000, n_dense: int = 13, dim: int = 256,
                   seed: int = 0):
    """(Split, FeatureSpec, Preprocessing-ready vocabularies) of the design's benchmark shape, in memory."""
    rng = np.random.default_rng(seed)
    ids = tuple(f"id_{i}" for i in range(n_ids))
    dense = tuple(f"dense_{i}" for i in range(n_dense))
    embeddings = ("product_embedding", "query_embedding", "history_embedding")
    cols = {}
    for name in ids:  # Zipf-ish: a few hot ids, a long tail
        cols[name] = np.minimum(rng.zipf(1.2, rows), vocab).astype(np.int64) - 1
    for name in dense:
        cols[name] = rng.lognormal(0.0, 1.0, rows).astype(np.float32)
    for name, distinct in zip(embeddings, (50_000, 100_000, 100_000)):  # products, queries, user histories
        e = rng.normal(size=(distinct, dim)).astype(np.float32)
        cols[name] = Embeddings(e / np.linalg.norm(e, axis=1, keepdims=True), rng.integers(0, distinct, rows))
    cols["__label__"] = (rng.random(rows) < 0.05).astype(np.int8)
    cols["impression_id"] = np.arange(rows, dtype=np.int64)
    spec = FeatureSpec(int_ids=ids, str_ids=(), dense=dense, log_dense=dense, ctr_pairs=(), embeddings=embeddings,
                       embedding_dim=dim, label="click")
    vocabularies = {name: list(range(vocab)) for name in ids}
    return Split("train", cols), spec, vocabularies


def _preprocessing(split, spec, vocabularies):
    x = dense_features(split.columns, spec, 0.05, 20.0)
    return Preprocessing(vocabularies=vocabularies, oov_buckets=1, dense_names=spec.dense,
                         mean=[float(v) for v in x.mean(0)], std=[float(v) for v in x.std(0)], impute={},
                         base_rate=float(np.mean(split.labels)), ctr_prior_strength=20.0, clip=5.0)


def _best_and_median(rates: list[float]) -> tuple[float, float]:
    ordered = sorted(rates)
    return ordered[-1], ordered[len(ordered) // 2]


def input_rate(split, spec, batch: int, windows: int = 5, batches: int = 25) -> tuple[float, float]:
    """(best, median) examples/s of iterating the training pipeline, over `windows` windows."""
    ds = make_dataset(split, spec, batch, shuffle=True).repeat()
    it = iter(ds)
    next(it)
    rates = []
    for _ in range(windows):
        started = time.perf_counter()
        n = sum(int(next(it)[0][spec.ids[0]].shape[0]) for _ in range(batches))
        rates.append(n / (time.perf_counter() - started))
    return _best_and_median(rates)


def train_rates(kind: str, split, spec, prep, batch: int, steps: int, table_optimizer: str, cross_rank: int,
                windows: int = 5, profile: bool = True):
    """(best and median fit examples/s over the pipeline, best step examples/s on a cached batch, matmul FLOPs
    per example, step_breakdown or None). Several windows, because other processes share these cores: the best
    window is the machine's capability, the median what a shared machine gave."""
    tf.keras.utils.set_random_seed(0)
    model = build_model(kind, spec, prep, NetConfig(cross_projection_dim=cross_rank))
    compile_model(model, TrainConfig(batch_size=batch, table_optimizer=table_optimizer))
    flops = matmul_flops_per_example(model)
    ds = make_dataset(split, spec, batch, shuffle=True).repeat()
    model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0)  # trace and warm up
    fit_rates = []
    for _ in range(windows):
        started = time.perf_counter()
        model.fit(ds, epochs=1, steps_per_epoch=steps, verbose=0)
        fit_rates.append(steps * batch / (time.perf_counter() - started))

    # The same compiled step on one batch repeated by tf.data (no gathers): the training step alone.
    one_batch = next(iter(make_dataset(split, spec, batch, shuffle=True)))
    cached = tf.data.Dataset.from_tensors(one_batch).repeat()
    model.fit(cached, epochs=1, steps_per_epoch=2, verbose=0)
    step_rates = []
    for _ in range(windows):
        started = time.perf_counter()
        model.fit(cached, epochs=1, steps_per_epoch=steps, verbose=0)
        step_rates.append(steps * batch / (time.perf_counter() - started))
    best, median = _best_and_median(fit_rates)
    return best, median, max(step_rates), flops, step_breakdown(model, one_batch) if profile else None


def op_kind(op: str) -> str:
    """The kind of a TensorFlow op type in the step breakdown."""
    if "MatMul" in op:
        return "matmul"
    if op.startswith(("ResourceScatter", "ResourceGather", "Unique", "UnsortedSegment", "GatherV2")):
        return "gather_scatter"
    if op.startswith("LookupTable"):
        return "lookup"
    return "other"


def step_breakdown(model, batch, steps: int = 10) -> dict[str, float]:
    """Op time per training step by op_kind, in ms summed over TensorFlow's compute threads (with 2 inter-op
    threads two ops can overlap, so the sum can exceed the step's wall time), from the TF profiler's trace."""
    step = tf.function(model.train_step)
    for _ in range(3):
        step(batch)["loss"].numpy()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        for _ in range(steps):
            step(batch)["loss"].numpy()
        tf.profiler.experimental.stop()
        traces = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        if not traces:
            raise RuntimeError(f"the TF profiler wrote no trace under {logdir}")
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(traces[0]).read_bytes())
    totals = {"matmul": 0, "gather_scatter": 0, "lookup": 0, "other": 0}
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name  # "<node name>:<op type>"
                if ":" in name and not name.startswith("ExecutorState"):
                    totals[op_kind(name.rsplit(":", 1)[1])] += event.duration_ps
    return {kind: ps / steps / 1e9 for kind, ps in totals.items()}


# ---------------------------------------------------------------------------------------------- scaling

SCALING = ((1, 1), (1, 2), (2, 1))  # (workers, threads per worker)


def scaling_worker(args) -> None:
    """One process of a scaling configuration: train on its share of each global batch, then (the chief) print
    the fit rates as one JSON line. Threads are set before TensorFlow runs its first op."""
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    kind = "multi_worker" if "TF_CONFIG" in os.environ else "default"
    strategy = distribute.make_strategy(kind)
    split, spec, vocabularies = synthetic_data(args.rows)
    prep = _preprocessing(split, spec, vocabularies)
    tf.keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_model(args.models[0], spec, prep, NetConfig(cross_projection_dim=args.cross_ranks[0]))
        compile_model(model, TrainConfig(batch_size=args.batch, strategy=kind))

    def dataset(context):
        return make_dataset(split, spec, args.batch, shuffle=True,
                            replicas=distribute.input_replicas(context)).repeat()

    data = strategy.distribute_datasets_from_function(dataset)
    model.fit(data, epochs=1, steps_per_epoch=3, verbose=0)  # trace and warm up
    rates = []
    for _ in range(args.windows):
        started = time.perf_counter()
        model.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0)
        rates.append(args.steps * args.batch / (time.perf_counter() - started))
    if distribute.is_chief(strategy):
        print(json.dumps({"scaling_rates": rates}), flush=True)


def scaling_rates(args, workers: int, threads: int) -> list[float]:
    """The chief's fit rates (examples/s per window) of `workers` fresh processes with `threads` threads each."""
    command = [sys.executable, "-m", "benchmarks.ranking_bench", "--scaling-worker", "--threads", str(threads),
               "--rows", str(args.rows), "--batch", str(args.batch), "--steps", str(args.steps),
               "--windows", str(args.windows), "--models", args.models[0], "--cross-ranks", str(args.cross_ranks[0])]
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    procs = []
    for index in range(workers):
        env = dict(os.environ)
        if workers > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses},
                                           "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      cwd=Path(__file__).resolve().parents[1]))
    outputs = [p.communicate()[0] for p in procs]
    for p, out in zip(procs, outputs):
        if p.returncode:
            raise RuntimeError(f"scaling worker ({workers} x {threads}) failed:\n{out[-3000:]}")
    lines = [line for out in outputs for line in out.splitlines() if line.startswith('{"scaling_rates"')]
    return json.loads(lines[0])["scaling_rates"]


def scaling(args) -> None:
    """Data-parallel training rates of SCALING's configurations and the speedups (see the module docstring)."""
    config = (f"{args.models[0]}, cross rank {args.cross_ranks[0]}, design-shape 26 ids x 100k, 13 dense, "
              f"3x256 emb, {args.rows} rows, global batch {args.batch}, {os.cpu_count()} cores")
    extra = {"load_avg_1min": round(os.getloadavg()[0], 2)}
    best = {}
    for workers, threads in SCALING:
        rates = scaling_rates(args, workers, threads)
        top, median = _best_and_median(rates)
        best[workers, threads] = top
        name = f"{workers} worker{'s' if workers > 1 else ''} x {threads} thread{'s' if threads > 1 else ''}"
        record("ranking", "scaling_train_examples_per_s", round(top), "examples/s", f"{name}, {config}",
               median=round(median), workers=workers, threads_per_worker=threads, **extra)
    speedup = best[2, 1] / best[1, 1]
    record("ranking", "scaling_speedup", round(speedup, 2), "x", f"2 workers x 1 thread over 1 worker x 1 thread, "
           f"{config}", target=1.6, **extra)
    record("ranking", "scaling_speedup", round(best[2, 1] / best[1, 2], 2), "x",
           f"2 workers x 1 thread over 1 worker x 2 threads, {config}", **extra)
    record("ranking", "scaling_efficiency", round(speedup / 2, 2), "fraction",
           f"2 workers x 1 thread over 2 x (1 worker x 1 thread), {config}", **extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the per-op-kind breakdown of the step (TF profiler)")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads (the 2-core target)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=16, help="steps per timing window (5 windows each)")
    parser.add_argument("--models", nargs="+", default=["dcn", "dashclip_two_tower"])
    parser.add_argument("--optimizers", nargs="+", default=["lazy_adam"],
                        help="table optimizers to compare (lazy_adam, adagrad, sgd, keras_adam)")
    parser.add_argument("--cross-ranks", nargs="+", type=int, default=[0, 64],
                        help="cross_projection_dim values: 0 = full rank (the default; the design's ~4.5 MFLOP "
                             "shape), 64 = the low-rank option")
    parser.add_argument("--scaling", action="store_true",
                        help="measure 1 worker x 1 thread, 1 worker x 2 threads and 2 workers x 1 thread instead")
    parser.add_argument("--scaling-worker", action="store_true", help=argparse.SUPPRESS)  # one --scaling process
    parser.add_argument("--windows", type=int, default=5, help="timing windows per measurement")
    args = parser.parse_args(argv)
    if args.scaling_worker:
        scaling_worker(args)
        return 0
    if args.scaling:
        scaling(args)
        return 0
    _setup_threads(args.threads)
    cores = f"{args.threads} threads on {os.cpu_count()} cores"
    config = f"design-shape 26 ids x 100k, 13 dense, 3x256 emb, batch {args.batch}, {cores}"

    load = os.getloadavg()[0]
    roofs = [matmul_roof()]
    split, spec, vocabularies = synthetic_data(args.rows)
    prep = _preprocessing(split, spec, vocabularies)
    pipeline, pipeline_median = input_rate(split, spec, args.batch)
    measured = []
    for kind in args.models:
        for rank in args.cross_ranks:
            for opt in args.optimizers:
                roofs.append(matmul_roof(1.5))  # between runs: other processes share the cores, keep the best
                measured.append((kind, rank, opt, *train_rates(kind, split, spec, prep, args.batch, args.steps, opt,
                                                               rank, profile=args.profile)))
    roof = max(roofs + [matmul_roof()])  # the best of all: the machine's roof, not a moment's contention
    extra = {"load_avg_1min": round(load, 2)}
    record("ranking", "matmul_gflops", round(roof, 1), "GFLOP/s", config, **extra)
    record("ranking", "input_examples_per_s", round(pipeline), "examples/s", config,
           median=round(pipeline_median), **extra)
    for kind, rank, opt, best, median, step_rate, flops, breakdown in measured:
        cross = f"cross rank {rank}" if rank else "full-rank cross"
        cfg = f"{kind}, {cross}, table {opt}, {config}"
        more = {"mflop_per_example": round(flops / 1e6, 3), **extra}
        record("ranking", "train_examples_per_s", round(best), "examples/s", cfg, median=round(median), **more)
        record("ranking", "step_examples_per_s", round(step_rate), "examples/s", cfg, **more)
        gflops = best * flops / 1e9
        record("ranking", "train_gflops", round(gflops, 1), "GFLOP/s", cfg, **more)
        record("ranking", "roof_fraction", round(gflops / roof, 3), "fraction", cfg, **more)
        record("ranking", "step_roof_fraction", round(step_rate * flops / 1e9 / roof, 3), "fraction", cfg, **more)
        record("ranking", "input_over_train", round(pipeline / best, 1), "ratio", cfg, **extra)
        for op, ms in (breakdown or {}).items():
            record("ranking", f"step_op_ms_{op}", round(ms, 2), "ms per step (summed over threads)", cfg, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
