"""Simulator scale: wall time, peak memory and throughput of generating worlds, each in a fresh process.

    python -m benchmarks.simulate_bench [--worlds tiny demo bench] [--keep]

The bench world (>= 10 million impressions) must stream to disk with a progress bar under 4 GiB of memory.
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

from benchmarks.common import record

ROOT = Path(__file__).resolve().parents[1]


def simulate_world(name: str, out: Path) -> None:
    """`python -m experiments.simulate` of experiments/configs/world/<name>.yaml into `out`, in a child process."""
    subprocess.run([sys.executable, "-m", "experiments.simulate", "--config",
                    str(ROOT / "experiments" / "configs" / "world" / f"{name}.yaml"), "--out", str(out),
                    "--overwrite", "--no-progress"], check=True, cwd=ROOT)


def run_world(name: str, out: Path) -> tuple[float, float, dict]:
    """Generate one world in a child process; returns (seconds, peak RSS in MiB, world.json)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    simulate_world(name, out)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        print(f"warning: peak RSS of {name} not above an earlier child's; it reads as the max so far", file=sys.stderr)
    return seconds, peak / 1024, json.loads((out / "world.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", nargs="+", default=["tiny", "demo", "bench"])
    parser.add_argument("--keep", action="store_true", help="keep the generated worlds under data/")
    args = parser.parse_args(argv)
    # Smallest first: RUSAGE_CHILDREN reports the largest child so far, so growing sizes read correctly.
    for name in args.worlds:
        tmp = Path(tempfile.mkdtemp(prefix=f"sim-{name}-"))
        out = ROOT / "data" / name if args.keep else tmp / name
        seconds, peak_mib, meta = run_world(name, out)
        rows = meta["rows"]["impressions"]
        record("simulate", "wall_time", round(seconds, 2), "s", name, impressions=rows)
        record("simulate", "peak_rss", round(peak_mib, 1), "MiB", name)
        record("simulate", "impressions_per_s", round(rows / seconds), "impressions/s", name)
        record("simulate", "oracle_auc_test", round(meta["summary"]["oracle_auc_test"], 4), "auc", name)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
