"""The serving path on a real export and its own training set (what `make demo` leaves behind), in one run:

    python -m benchmarks.serving_demo [--model exports/dashclip_two_tower] [--data data/demo] [--requests 300]

    batch_rows, batch_max_abs_diff   `python -m ranking.serving.batch_score` (Beam, tfx-bsl RunInference on
                                     serve_tf_example)
                                     over the whole test split: rows out == rows in, one per impression_id, and the
                                     largest difference to direct serving_default calls on the same rows
    keras_max_abs_diff               the SavedModel against the Keras model rebuilt from its MLflow run, whole test
                                     split (the export contract: <= 1e-5)
    online_rank_p50_ms / _p99_ms     OnlineRanker.rank for real test requests: Feast online features of every
                                     candidate (SQLite online store) + one serving_default call + the sort
    online_score_p50_ms / _p99_ms    the same requests with their features already fetched (score only)
Results: one JSON line each, printed and appended to benchmarks/results/serving_demo.jsonl. It needs an export whose
model_info.json names an MLflow run and a training set, and the data directory's materialized online store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import record
from feature_store.online import OnlineFeatures
from ranking.serving import batch_score
from ranking.serving.contract import resolve_version_dir
from ranking.serving.export import _client, rebuild_model, resolve_run
from ranking.serving.online import OnlineRanker
from ranking.serving.tf_example import check_columns, table_to_columns
from ranking.tf_legacy_keras import tf

ROOT = Path(__file__).resolve().parents[1]


def read_inputs(folder: Path, inputs: dict) -> tuple[dict[str, np.ndarray], pa.Table]:
    """Every model input of a split folder as numpy ([n] or [n, dim], cast to the declared dtypes), plus the key
    columns as a table."""
    keys = ["impression_id", "request_id", "user_id", "query_id", "product_id", "ad_id", "ts"]
    table = pa.concat_tables(pq.read_table(f, columns=sorted(set(inputs) | set(keys)))
                             for f in sorted(folder.glob("*.parquet")))
    return check_columns(table_to_columns(table, inputs), inputs), table.select(keys)


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return round(float(np.percentile(ms, 50)), 3), round(float(np.percentile(ms, 99)), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving_demo", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "exports" / "dashclip_two_tower")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--requests", type=int, default=300, help="online requests timed (after 20 warm-up)")
    args = parser.parse_args(argv)
    model_dir = resolve_version_dir(args.model)
    info_path = model_dir / "assets.extra" / "model_info.json"
    if not info_path.is_file():
        print(f"no export at {args.model} (run make demo first): {info_path} is missing")
        return 1
    info = json.loads(info_path.read_text())
    test_dir = Path(info["training_set"]) / "test"
    cols, keys = read_inputs(test_dir, info["inputs"])
    n = len(keys)
    config = f"{model_dir.relative_to(ROOT) if model_dir.is_relative_to(ROOT) else model_dir}, test split {n:,} rows"
    print(f"{model_dir}: {n:,} test rows from {test_dir}", flush=True)

    # Direct serving_default calls and the Keras model on the same rows.
    ranker = OnlineRanker(model_dir)
    direct = np.concatenate([ranker.score({k: v[s:s + 16384] for k, v in cols.items()}) for s in range(0, n, 16384)])
    client = _client()
    model = rebuild_model(client, resolve_run(client, info["mlflow_run_id"]))
    keras = np.concatenate([tf.sigmoid(model({k: tf.constant(v[s:s + 16384]) for k, v in cols.items()},
                                             training=False)).numpy() for s in range(0, n, 16384)])
    keras_diff = float(np.abs(keras - direct).max())

    # Beam batch scoring of the whole split, joined back on impression_id.
    with TemporaryDirectory(prefix="serving-demo-") as tmp:
        out = Path(tmp) / "scores.parquet"
        started = time.perf_counter()
        if batch_score.main(["--model", str(model_dir), "--input", str(test_dir), "--output", str(out)]) != 0:
            return 1
        beam_seconds = time.perf_counter() - started
        scored = pq.read_table(out, columns=["impression_id", "probability"])
    got_ids = scored.column("impression_id").to_numpy()
    ids = keys.column("impression_id").to_numpy()
    order, where = np.argsort(ids), None
    where = order[np.searchsorted(ids, got_ids, sorter=order)]
    one_per_row = scored.num_rows == n and len(np.unique(got_ids)) == n and np.array_equal(ids[where], got_ids)
    batch_diff = float(np.abs(scored.column("probability").to_numpy() - direct[where]).max())

    # The online path: real test requests, features from the Feast online store.
    ranker = OnlineRanker(model_dir, features=OnlineFeatures(args.data, info["embedding_version"]))
    requests = keys.column("request_id").to_numpy()
    starts = np.flatnonzero(np.r_[True, requests[1:] != requests[:-1]])
    bounds = list(zip(starts, np.r_[starts[1:], n]))[: args.requests + 20]
    rank_times, score_times, sizes = [], [], []
    for k, (a, b) in enumerate(bounds):
        rows = slice(a, b)
        context = {"ts": keys.column("ts")[a].as_py(), "device": cols["device"][rows],
                   "position": cols["position"][rows], "discount": cols["discount"][rows],
                   "store_distance_km": cols["store_distance_km"][rows],
                   "campaign_id": cols["campaign_id"][rows], "advertiser_id": cols["advertiser_id"][rows]}
        t0 = time.perf_counter()
        ranked = ranker.rank(int(cols["user_id"][a]), int(cols["query_id"][a]), cols["product_id"][rows],
                             cols["ad_id"][rows], context)
        t1 = time.perf_counter()
        ranker.score({name: v[rows] for name, v in cols.items()})
        t2 = time.perf_counter()
        assert len(ranked) == b - a and (np.diff(ranked.probability.to_numpy()) <= 0).all()
        if k >= 20:
            rank_times.append(t1 - t0)
            score_times.append(t2 - t1)
            sizes.append(b - a)
    rank_p50, rank_p99 = percentiles(rank_times)
    score_p50, score_p99 = percentiles(score_times)

    load = round(os.getloadavg()[0], 2)
    extra = {"load_avg_1min": load}
    record("serving_demo", "batch_rows", scored.num_rows, "rows", config, one_score_per_row=bool(
        one_per_row), input_rows=n, beam_seconds=round(beam_seconds, 1), **extra)
    record("serving_demo", "batch_max_abs_diff", batch_diff, "probability", config, **extra)
    record("serving_demo", "keras_max_abs_diff", keras_diff, "probability", config, **extra)
    online = f"{config}; {len(rank_times)} test requests, median {int(np.median(sizes))} candidates"
    record("serving_demo", "online_rank_p50_ms", rank_p50, "ms", online, **extra)
    record("serving_demo", "online_rank_p99_ms", rank_p99, "ms", online, **extra)
    record("serving_demo", "online_score_p50_ms", score_p50, "ms", online, **extra)
    record("serving_demo", "online_score_p99_ms", score_p99, "ms", online, **extra)
    ok = one_per_row and batch_diff <= 1e-5 and keras_diff <= 1e-5
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
