"""What every benchmark shares: a result line format and where results go.

Each result is one JSON line with at least benchmark, metric, value, unit, config and git_sha (docs/design.md
section 9), printed and appended to benchmarks/results/<benchmark>.jsonl.
"""

from __future__ import annotations

import json
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def record(benchmark: str, metric: str, value: float, unit: str, config: str, **extra) -> dict:
    """Print one result line and append it to benchmarks/results/<benchmark>.jsonl."""
    line = {"benchmark": benchmark, "metric": metric, "value": value, "unit": unit, "config": config,
            "git_sha": git_sha(), "machine": platform.node(), "when": datetime.now(timezone.utc).isoformat(), **extra}
    print(json.dumps(line), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{benchmark}.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    return line
