"""Serving speed in one run: online scoring latency of one request of 200 candidates on one core, and batch scoring
rows/s through the Beam pipeline (ranking.serving.batch_score, in-process and on 2 worker processes) vs direct
`serving_default` calls.

    python -m benchmarks.serving_bench [--rows 150000] [--requests 3000] [--candidates 200] [--batch-size 4096]

The model: `dashclip_two_tower` with the demo network (experiments/configs/ranking/demo.yaml, which keeps
ranking/config.py's NetConfig defaults: 16-d id embeddings, 3 full-rank cross layers, DNN [256, 128], 64-d content
projections, head [128, 64]), fit for one epoch on the synthetic training set of tests/helpers/training_sets.py with
256-d embeddings (the demo DashCLIP width) and exported through `python -m ranking.train` in a subprocess. The
weights do not change the cost of a forward pass; the fit only makes the scores non-trivial.

    online_p50_ms, online_p99_ms   OnlineRanker.score on 200 candidates whose features are already fetched (the
                                   input checks, numpy -> tensor conversion and one serving_default call), in a
                                   child process pinned to the idlest CPU with 1 intra-op and 1 inter-op TF thread, over
                                   --requests requests after 200 warm-up requests (target p99 < 5 ms)
    online_signature_p50_ms        the serving_default call alone on pre-made tensors (the floor of the above)
    beam_rows_per_s                `python -m ranking.serving.batch_score` main() on --rows rows (the test split
                                   tiled): pipeline construction, model load, parquet read, tf.Example encoding,
                                   RunInference, PredictionLog decoding and the parquet write, wall clock (the
                                   modules imported before: the direct calls pay no imports either)
    direct_rows_per_s              the same parquet read into numpy and scored with serving_default in batches of
                                   --batch-size (the same conversion code), wall clock; direct_score_rows_per_s: the
                                   signature calls alone
    beam_over_direct               beam_rows_per_s / direct_rows_per_s (target >= 0.5)
    beam_mp_rows_per_s             the same command with `--direct_running_mode=multi_processing
                                   --direct_num_workers=2`: the FnApiRunner's 2 SDK worker processes, each starting
                                   Python, importing TensorFlow and Beam's RunInference (which imports torch where it
                                   is installed) and loading the model, a fixed cost of several seconds that only
                                   enough rows amortise; its scores must equal the in-process run's (max_abs_diff)
    beam_mp_over_direct            beam_mp_rows_per_s / direct_rows_per_s (target >= 0.5)
    beam_mp_startup_s              that fixed cost, roughly: the same 2-worker command on --batch-size rows (one
                                   slice), run just before
Results: one JSON line each, printed and appended to benchmarks/results/serving.jsonl.

The ranking modules are imported inside the functions that use them: the latency child runs this same module and
pins itself to one CPU before TensorFlow starts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import record

ROOT = Path(__file__).resolve().parents[1]
DIM = 256  # the demo DashCLIP embedding width


def _env(tmp: Path) -> dict:
    return {**os.environ, "TF_USE_LEGACY_KERAS": "1", "HF_HUB_OFFLINE": "1",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "PYTHONPATH": str(ROOT)}


def train_and_export(tmp: Path) -> Path:
    """The synthetic training set (256-d embeddings) and a one-epoch dashclip_two_tower with the demo network,
    exported; returns the version folder."""
    sys.path.insert(0, str(ROOT))  # the tests package holds the synthetic training set
    from tests.helpers.training_sets import make_training_set

    make_training_set(tmp, dim=DIM)
    command = [sys.executable, "-m", "ranking.train", "--config", str(ROOT / "experiments/configs/ranking/demo.yaml"),
               f"data={tmp / 'synth'}", f"export_dir={tmp / 'exports'}", f"checkpoint_dir={tmp / 'ckpt'}",
               "models=[dashclip_two_tower]", "train.epochs=1"]
    done = subprocess.run(command, env=_env(tmp), cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"training failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return tmp / "exports" / "dashclip_two_tower" / "1"


def request_features(test_dir: Path, inputs: dict, n: int) -> dict[str, np.ndarray]:
    """n test rows as OnlineFeatures returns them: numpy with the training set's dtypes, [n, dim] embeddings."""
    from ranking.serving.tf_example import table_to_columns

    table = pq.read_table(test_dir).slice(0, n)
    cols = table_to_columns(table, inputs)  # strings come back as bytes, numbers in their stored dtypes
    return {name: (values.astype(object) if inputs[name]["dtype"] == "string" else values)
            for name, values in cols.items()}


# ------------------------------------------------------------------------------------------------ (a) latency


def idlest_cpu(seconds: float = 0.5) -> int:
    """The CPU (of those this process may use) with the most idle time over `seconds` (from /proc/stat), so the
    pinned latency loop does not share its core with a busy neighbour from the start."""
    allowed = os.sched_getaffinity(0)

    def idle() -> dict[int, int]:
        out = {}
        for line in Path("/proc/stat").read_text().splitlines():
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in allowed:
                out[int(name[3:])] = int(fields[3]) + int(fields[4])  # idle + iowait jiffies
        return out

    before = idle()
    time.sleep(seconds)
    after = idle()
    return max(after, key=lambda cpu: (after[cpu] - before.get(cpu, 0), -cpu)) if after else min(allowed)


def latency_child(model_dir: str, test_dir: str, candidates: int, requests: int) -> int:
    """Runs in its own process: pinned to the idlest CPU, TF on one thread; prints one JSON line of ms."""
    cpu = idlest_cpu()
    os.sched_setaffinity(0, {cpu})
    from ranking.serving.online import OnlineRanker  # TensorFlow starts on the pinned CPU

    ranker = OnlineRanker(model_dir, single_thread=True)
    features = request_features(Path(test_dir), ranker.info["inputs"], candidates)
    assert len(features[ranker.input_names[0]]) == candidates, "the test split has fewer rows than candidates"

    def timed(fn, n):
        for _ in range(200):  # warm-up: graph tracing, allocator, caches
            fn()
        out = np.empty(n)
        for i in range(n):
            started = time.perf_counter()
            fn()
            out[i] = time.perf_counter() - started
        return out * 1000

    full = timed(lambda: ranker.score(features), requests)
    feed, _ = ranker._checked(features)
    tensors = {name: ranker._constant(v) for name, v in feed.items()}
    signature = timed(lambda: ranker._fn(**tensors)["probability"].numpy(), requests)
    print(json.dumps({"cpu": cpu, "p50": float(np.percentile(full, 50)), "p99": float(np.percentile(full, 99)),
                      "mean": float(full.mean()), "signature_p50": float(np.percentile(signature, 50)),
                      "signature_p99": float(np.percentile(signature, 99))}))
    return 0


def online_latency(model_dir: Path, test_dir: Path, candidates: int, requests: int, tmp: Path) -> dict:
    command = [sys.executable, "-m", "benchmarks.serving_bench", "--child", str(model_dir), str(test_dir),
               str(candidates), str(requests)]
    done = subprocess.run(command, env=_env(tmp), cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"latency child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ (b) batch


def bench_rows(test_dir: Path, rows: int, path: Path) -> Path:
    """The test split tiled to `rows` rows (fresh impression_ids), one parquet file in row groups of 16384."""
    test = pq.read_table(test_dir)
    table = pa.concat_tables([test] * (rows // test.num_rows + 1)).slice(0, rows)
    table = table.set_column(table.schema.get_field_index("impression_id"), "impression_id",
                             pa.array(np.arange(rows, dtype=np.int64)))
    pq.write_table(table, path, row_group_size=16384)
    return path


def direct_scores(model_dir: Path, data: Path, batch_size: int) -> tuple[np.ndarray, float]:
    """(probability per row in file order, seconds of the signature calls alone)."""
    from ranking.serving.contract import read_model_info
    from ranking.serving.tf_example import table_to_columns
    from ranking.tf_legacy_keras import tf

    inputs = read_model_info(model_dir)["inputs"]
    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    table = pq.read_table(data, columns=list(inputs))
    out, scoring = [], 0.0
    for start in range(0, table.num_rows, batch_size):
        cols = table_to_columns(table.slice(start, batch_size), inputs)
        feed = {name: tf.constant(v if inputs[name]["dtype"] == "string" else v.astype(inputs[name]["dtype"]))
                for name, v in cols.items()}
        started = time.perf_counter()
        out.append(fn(**feed)["probability"].numpy())
        scoring += time.perf_counter() - started
    return np.concatenate(out), scoring


def beam_run(model_dir: Path, data: Path, output: Path, batch_size: int, beam_args: list[str]) -> float:
    """Seconds of one `python -m ranking.serving.batch_score` main() call (in this process)."""
    from ranking.serving.batch_score import main as batch_score

    started = time.perf_counter()
    assert batch_score(["--model", str(model_dir), "--input", str(data), "--output", str(output),
                        "--batch-size", str(batch_size), "--no-progress", *beam_args]) == 0
    return time.perf_counter() - started


def batch_throughput(model_dir: Path, data: Path, rows: int, batch_size: int, tmp: Path) -> dict:
    # Imported before any clock starts: TensorFlow, Beam and tfx-bsl take seconds to import, once per process,
    # which the direct calls (timed after) never paid. The in-process run's time is the pipeline's alone.
    import ranking.serving.batch_score  # noqa: F401

    beam_seconds = beam_run(model_dir, data, tmp / "scores.parquet", batch_size, [])
    # The worker processes import the ranking package from the repository, wherever they start.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    workers = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    one_slice = tmp / "one_slice.parquet"
    pq.write_table(pq.ParquetFile(data).read_row_group(0).slice(0, batch_size), one_slice)
    startup = beam_run(model_dir, one_slice, tmp / "scores_one_slice.parquet", batch_size, workers)
    mp_seconds = beam_run(model_dir, data, tmp / "scores_mp.parquet", batch_size, workers)

    started = time.perf_counter()
    direct, scoring = direct_scores(model_dir, data, batch_size)
    direct_seconds = time.perf_counter() - started

    scored = pq.read_table(tmp / "scores.parquet").sort_by("impression_id")
    scored_mp = pq.read_table(tmp / "scores_mp.parquet").sort_by("impression_id")
    assert scored.num_rows == scored_mp.num_rows == rows
    assert scored_mp.column("impression_id").equals(scored.column("impression_id"))
    probability = scored.column("probability").to_numpy()
    return {"beam": rows / beam_seconds, "beam_mp": rows / mp_seconds, "direct": rows / direct_seconds,
            "direct_score": rows / scoring, "max_abs_diff": float(np.abs(probability - direct).max()),
            "mp_max_abs_diff": float(np.abs(scored_mp.column("probability").to_numpy() - probability).max()),
            "beam_seconds": beam_seconds, "mp_seconds": mp_seconds, "mp_startup": startup,
            "direct_seconds": direct_seconds}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        model_dir, test_dir, candidates, requests = argv[1:]
        return latency_child(model_dir, test_dir, int(candidates), int(requests))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=150_000, help="rows scored in batch (the test split tiled)")
    parser.add_argument("--requests", type=int, default=3000, help="online requests timed after 200 warm-up")
    parser.add_argument("--candidates", type=int, default=200, help="candidates per online request")
    parser.add_argument("--batch-size", type=int, default=4096, help="examples per inference call in batch")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="servingbench-"))
    try:
        model_dir = train_and_export(tmp)
        test_dir = tmp / "synth" / "training_sets" / "synth-v1" / "test"
        lat = online_latency(model_dir, test_dir, args.candidates, args.requests, tmp)
        data = bench_rows(test_dir, args.rows, tmp / "bench_rows.parquet")
        batch = batch_throughput(model_dir, data, args.rows, args.batch_size, tmp)
        load = os.getloadavg()[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    net = "dashclip_two_tower, demo net (NetConfig defaults), 256-d embeddings, 1-epoch fit on the synthetic set"
    extra = {"load_avg_1min": round(load, 2)}
    online = f"{net}; {args.candidates} candidates, features fetched, 1 CPU, 1 TF thread"
    record("serving", "online_p50_ms", round(lat["p50"], 3), "ms", online, requests=args.requests, **extra)
    record("serving", "online_p99_ms", round(lat["p99"], 3), "ms", online, requests=args.requests,
           target_p99_ms=5.0, **extra)
    record("serving", "online_mean_ms", round(lat["mean"], 3), "ms", online, requests=args.requests, **extra)
    record("serving", "online_signature_p50_ms", round(lat["signature_p50"], 3), "ms", online,
           p99=round(lat["signature_p99"], 3), **extra)
    batch_cfg = f"{net}; {args.rows} rows, batch {args.batch_size}, FnApiRunner, 2 cores shared"
    record("serving", "beam_rows_per_s", round(batch["beam"]), "rows/s", batch_cfg,
           seconds=round(batch["beam_seconds"], 2), **extra)
    record("serving", "direct_rows_per_s", round(batch["direct"]), "rows/s", batch_cfg,
           seconds=round(batch["direct_seconds"], 2), **extra)
    record("serving", "direct_score_rows_per_s", round(batch["direct_score"]), "rows/s", batch_cfg, **extra)
    record("serving", "beam_over_direct", round(batch["beam"] / batch["direct"], 3), "ratio", batch_cfg,
           max_abs_diff=batch["max_abs_diff"], target=0.5, **extra)
    mp_cfg = batch_cfg.replace("FnApiRunner", "FnApiRunner multi_processing, 2 workers")
    record("serving", "beam_mp_rows_per_s", round(batch["beam_mp"]), "rows/s", mp_cfg,
           seconds=round(batch["mp_seconds"], 2), **extra)
    record("serving", "beam_mp_over_direct", round(batch["beam_mp"] / batch["direct"], 3), "ratio", mp_cfg,
           max_abs_diff_to_in_process=batch["mp_max_abs_diff"], target=0.5, **extra)
    record("serving", "beam_mp_startup_s", round(batch["mp_startup"], 2), "s", mp_cfg, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
