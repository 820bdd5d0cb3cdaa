"""Feature-store scale: wall time and peak memory of build / training-set / materialize per world, each step in a
fresh process, and the online lookup latency of one request of 100 candidates.

    python -m benchmarks.feature_store_bench [--worlds tiny demo] [--dim 256] [--requests 200]
    python -m benchmarks.feature_store_bench --worlds bench --steps build      # how build time grows

Worlds come from data/<name>/ when it holds raw tables (only raw/ and world.json are copied, into a temporary
folder), else they are generated there with experiments.simulate. Embeddings are seeded random stand-ins of
`--dim` dimensions (tests/helpers/embeddings.py), so the numbers do not depend on a trained DashCLIP.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import record
from benchmarks.simulate_bench import simulate_world
from feature_store.__main__ import main as feature_store_cli
from feature_store.online import OnlineFeatures

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this repository's tests package (stand-in embeddings) before any installed `tests`
from tests.helpers.embeddings import write_standin_embeddings  # noqa: E402

VERSION = "bench-standin"


def child(argv: list[str]) -> int:
    """Run `python -m feature_store <argv>` in this process and print its peak RSS (the parent records it)."""
    code = feature_store_cli(argv)
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
    return code


def step(command: str, data: Path, *overrides: str) -> tuple[float, float, dict]:
    """One CLI step in a fresh process: (seconds, peak RSS MiB, the step's JSON summary)."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "benchmarks.feature_store_bench", "--child", command, "--data",
                          str(data), "--embeddings", VERSION, "progress=false", *overrides],
                         check=True, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return seconds, lines[-1]["peak_rss_mib"], lines[-2]


def world(name: str, tmp: Path) -> Path:
    """A private copy of data/<name>'s raw tables, or a freshly generated world."""
    data = tmp / name
    source = ROOT / "data" / name
    if (source / "raw" / "impressions").exists() and (source / "world.json").exists():
        shutil.copytree(source / "raw", data / "raw")
        shutil.copy(source / "world.json", data / "world.json")
    else:
        simulate_world(name, data)
    return data


def online_latency(data: Path, n_requests: int, candidates: int = 100) -> tuple[float, float]:
    """p50 / p99 milliseconds of OnlineFeatures.get for requests of `candidates` products."""
    imp = pd.read_parquet(data / "raw" / "impressions", columns=["user_id", "query_id", "product_id", "ad_id", "ts"])
    online = OnlineFeatures(data, VERSION)
    rng = np.random.default_rng(0)
    products = imp.drop_duplicates("product_id")
    at = imp.ts.max().to_pydatetime()
    latencies = []
    for i in range(n_requests + 20):
        row = imp.iloc[int(rng.integers(len(imp)))]
        cand = products.iloc[rng.choice(len(products), min(candidates, len(products)), replace=False)]
        context = {"ts": at, "device": "app", "position": np.arange(1, len(cand) + 1) % 127 + 1,
                   "discount": 0.0, "store_distance_km": 2.5}
        started = time.perf_counter()
        online.get(int(row.user_id), int(row.query_id), cand.product_id.tolist(), context,
                   ad_ids=cand.ad_id.tolist())
        if i >= 20:  # after warm-up
            latencies.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", nargs="+", default=["tiny", "demo"])
    parser.add_argument("--dim", type=int, default=256, help="stand-in embedding dimension (DashCLIP: 256)")
    parser.add_argument("--requests", type=int, default=200, help="online requests timed per world")
    parser.add_argument("--steps", nargs="+", default=["build", "training-set", "materialize", "online"],
                        choices=["build", "training-set", "materialize", "online"])
    args = parser.parse_args(argv)
    for name in args.worlds:
        tmp = Path(tempfile.mkdtemp(prefix=f"fsbench-{name}-"))
        try:
            data = world(name, tmp)
            write_standin_embeddings(data, VERSION, args.dim, seed=0)
            config = f"{name}/dim{args.dim}"
            for command in [c for c in ("build", "training-set", "materialize") if c in args.steps]:
                seconds, peak, summary = step(command, data)
                metric = command.replace("-", "_")
                extra = {"rows": summary["rows"]} if "rows" in summary else {}
                record("feature_store", f"{metric}_wall_time", round(seconds, 2), "s", config, **extra)
                # the step alone, without interpreter start and imports (Feast alone takes ~4 s to import)
                record("feature_store", f"{metric}_step_time", summary["seconds"], "s", config)
                record("feature_store", f"{metric}_peak_rss", round(peak, 1), "MiB", config)
                if command == "training-set":
                    total = sum(summary["rows"].values())
                    record("feature_store", "training_set_rows_per_s", round(total / seconds), "rows/s", config,
                           rows=total)
            if "online" in args.steps:
                p50, p99 = online_latency(data, args.requests)
                record("feature_store", "online_lookup_p50", round(p50, 2), "ms", config, candidates=100)
                record("feature_store", "online_lookup_p99", round(p99, 2), "ms", config, candidates=100)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
