"""Online feature lookups and online ranking with the Redis online store against the SQLite one, in one run.

    python -m benchmarks.online_store_bench [--world demo] [--requests 1000] [--candidates 100 200] [--redis HOST:PORT]

The world: data/<world>'s raw tables (generated when absent, as benchmarks/feature_store_bench.py does) with seeded
256-d stand-in embeddings (the demo DashCLIP width), built twice through `python -m feature_store build`
(online_store=sqlite and online_store=redis) and materialized to the data's end. Redis: a private redis-server on a
free 127.0.0.1 port, in memory only (tests/feature_store/redis_server.py), unless --redis names a running one. The
model: `dashclip_two_tower` with the demo network, fit for one epoch on the synthetic training set and exported
(benchmarks/serving_bench.py train_and_export); the weights do not change the cost of a forward pass.

The timing runs in a child process pinned to the idlest CPU, TensorFlow on one intra-op and one inter-op thread
(one core for lookups and scoring; the redis-server runs outside it). A request: a random impression's user and
query, `n` distinct random products with their ads (campaign_id and advertiser_id as request context), at the
materialization time. The two stores take turns request by request, so a change of machine load hits both alike;
the first 50 requests of each size are warm-up.

    get_p50_ms, get_p99_ms     OnlineFeatures.get alone: every online feature of the n candidates
    rank_p50_ms, rank_p99_ms   OnlineRanker.rank end to end: the lookup, the input checks, one serving_default
                               call and the sort (target: p99 < 10 ms for 200 candidates with Redis)
    get_cpu_p50_ms, rank_cpu_p50_ms   the same, in CPU time of the timing process: what a request costs the
                               serving core, without waiting for it (on a loaded machine the wall times above also
                               count the time the core served others) nor the Redis server's own work
    feast_get_p50_ms, feast_get_p99_ms   Feast's own FeatureStore.get_online_features for the same features and
                               entity rows, the response left undecoded (the lookup before OnlineFeatures read the
                               stores directly: a lower bound of its cost)
Each line carries store (sqlite | redis), candidates and requests; features_equal says whether the two stores
returned bit-identical features for the first request of that size. Results: one JSON line each, printed and
appended to benchmarks/results/online_store.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import record
from benchmarks.feature_store_bench import world
from benchmarks.serving_bench import DIM, _env, idlest_cpu, train_and_export
from feature_store.__main__ import main as feature_store_cli

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this repository's tests package (stand-in embeddings, the redis-server helper)
from tests.feature_store.redis_server import redis_server  # noqa: E402
from tests.helpers.embeddings import write_standin_embeddings  # noqa: E402

VERSION = "bench-standin"
STORES = ("sqlite", "redis")
WARMUP = 50


def build_stores(data: Path, redis: str) -> dict[str, Path]:
    """The world built and materialized once per online store (a copy of its raw tables and embeddings each)."""
    write_standin_embeddings(data, VERSION, DIM, seed=0)
    folders = {}
    for store in STORES:
        folder = data.parent / f"{data.name}-{store}"
        shutil.copytree(data, folder)
        keys = ["progress=false", f"online_store={store}", f"redis_connection={redis}"]
        for command in ("build", "materialize"):
            assert feature_store_cli([command, "--data", str(folder), "--embeddings", VERSION, *keys]) == 0
        folders[store] = folder
    return folders


def requests(data: Path, candidates: int, count: int, seed: int) -> list[tuple]:
    """`count` requests of `candidates` distinct products: (user_id, query_id, product_ids, ad_ids, context)."""
    import pandas as pd

    imp = pd.read_parquet(data / "raw" / "impressions",
                          columns=["ts", "user_id", "query_id", "product_id", "ad_id", "campaign_id", "advertiser_id"])
    ads = imp.drop_duplicates("product_id")
    if len(ads) < candidates:
        raise SystemExit(f"{data}: {len(ads)} products, fewer than --candidates {candidates}")
    at = imp.ts.max().to_pydatetime()
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        row = imp.iloc[int(rng.integers(len(imp)))]
        cand = ads.iloc[rng.choice(len(ads), candidates, replace=False)]
        context = {"ts": at, "device": "app", "position": np.arange(candidates) % 127 + 1, "discount": 0.0,
                   "store_distance_km": 2.5, "campaign_id": cand.campaign_id.to_numpy(),
                   "advertiser_id": cand.advertiser_id.to_numpy()}
        out.append((int(row.user_id), int(row.query_id), cand.product_id.tolist(), cand.ad_id.tolist(), context))
    return out


def same_features(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k].view(np.uint32), b[k].view(np.uint32)) if a[k].dtype == np.float32
        else np.array_equal(a[k], b[k]) for k in a)


def latency_child(folders: dict[str, str], model_dir: str, sizes: list[int], count: int) -> int:
    """Runs in its own process, pinned to the idlest CPU with one TF thread; prints one JSON line per
    (store, size): p50/p99 ms of OnlineFeatures.get and of OnlineRanker.rank."""
    cpu = idlest_cpu()
    os.sched_setaffinity(0, {cpu})
    from feature_store.online import OnlineFeatures
    from ranking.serving.online import OnlineRanker, set_single_thread  # TensorFlow starts on the pinned CPU

    set_single_thread()
    sources = {s: OnlineFeatures(folders[s], VERSION) for s in STORES}
    rankers = {s: OnlineRanker(model_dir, features=sources[s]) for s in STORES}
    for size in sizes:
        reqs = requests(Path(folders[STORES[0]]), size, WARMUP + count, seed=size)
        user, query, products, ads, context = reqs[0]
        equal = same_features(*(sources[s].get(user, query, products, context, ad_ids=ads) for s in STORES))
        times = {s: {k: [] for k in ("get", "rank", "get_cpu", "rank_cpu", "feast_get")} for s in STORES}
        for i, (user, query, products, ads, context) in enumerate(reqs):
            rows = {"user_id": [user] * size, "query_id": [query] * size, "product_id": products, "ad_id": ads}
            for s in STORES:
                t0, c0 = time.perf_counter(), time.process_time()
                sources[s].get(user, query, products, context, ad_ids=ads)
                t1, c1 = time.perf_counter(), time.process_time()
                rankers[s].rank(user, query, products, ads, context)
                t2, c2 = time.perf_counter(), time.process_time()
                sources[s].store.get_online_features(features=sources[s].feature_refs, entity_rows=rows)
                t3 = time.perf_counter()
                if i >= WARMUP:
                    for k, v in (("get", t1 - t0), ("rank", t2 - t1), ("get_cpu", c1 - c0), ("rank_cpu", c2 - c1),
                                 ("feast_get", t3 - t2)):
                        times[s][k].append(v)
        for s in STORES:
            ms = {k: np.asarray(v) * 1000 for k, v in times[s].items()}
            print(json.dumps({"store": s, "candidates": size, "cpu": cpu, "features_equal": equal,
                              **{f"{k}_{q}": float(np.percentile(v, int(q[1:]))) for k, v in ms.items()
                                 for q in ("p50", "p99")}}), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        folders, model_dir, sizes, count = argv[1:]
        return latency_child(json.loads(folders), model_dir, [int(s) for s in sizes.split(",")], int(count))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", default="demo", help="data/<world> raw tables, or a generated world of that name")
    parser.add_argument("--requests", type=int, default=1000, help="requests timed per store and size (after 50)")
    parser.add_argument("--candidates", type=int, nargs="+", default=[100, 200], help="candidates per request")
    parser.add_argument("--redis", default="", metavar="HOST:PORT",
                        help="a running Redis (Feast connection_string) whose keys of the Feast project "
                             "dashclip_ads the run may overwrite; default: a private redis-server")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="onlinestorebench-"))
    try:
        with contextlib.ExitStack() as stack:
            redis = args.redis or stack.enter_context(redis_server(tmp / "redis"))
            folders = build_stores(world(args.world, tmp), redis)
            model_dir = train_and_export(tmp)
            command = [sys.executable, "-m", "benchmarks.online_store_bench", "--child",
                       json.dumps({s: str(f) for s, f in folders.items()}), str(model_dir),
                       ",".join(map(str, args.candidates)), str(args.requests)]
            done = subprocess.run(command, env=_env(tmp), cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"latency child failed:\n{done.stderr[-3000:]}")
            lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        load = round(os.getloadavg()[0], 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    for line in lines:
        store, n = line["store"], line["candidates"]
        config = (f"{args.world} world, {DIM}-d stand-in embeddings, dashclip_two_tower demo net; {store} online "
                  f"store, {n} candidates, 1 CPU, 1 TF thread")
        extra = {"store": store, "candidates": n, "requests": args.requests, "features_equal": line["features_equal"],
                 "redis": "private" if not args.redis else "given", "load_avg_1min": load}
        for metric in ("get", "rank"):
            record("online_store", f"{metric}_p50_ms", round(line[f"{metric}_p50"], 3), "ms", config, **extra)
            target = {"target_p99_ms": 10.0} if metric == "rank" and store == "redis" and n == 200 else {}
            record("online_store", f"{metric}_p99_ms", round(line[f"{metric}_p99"], 3), "ms", config, **extra,
                   **target)
            record("online_store", f"{metric}_cpu_p50_ms", round(line[f"{metric}_cpu_p50"], 3), "ms", config,
                   **extra)
        for q in ("p50", "p99"):
            record("online_store", f"feast_get_{q}_ms", round(line[f"feast_get_{q}"], 3), "ms", config, **extra)
    return 0 if all(line["features_equal"] for line in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
