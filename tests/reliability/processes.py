"""Running the real entry points as subprocesses, and killing them at a chosen point.

    env = entry_env(tmp_path)                                   # quiet TF, a private MLflow store
    run(["-m", "ranking.train", "--config", cfg], env)          # raises with the stderr tail unless exit 0
    killed(["-m", "ranking.train", ...], env, "after-rename:*/checkpoints/*")   # SIGKILLed at that write
    kill_when(["-m", ...], env, lambda: (out / "x").exists())   # SIGKILLed once a condition holds

The kill points are core.files' fault points (DASHCLIP_KILL_AT): every checkpoint, table, export and report goes
through core.files' atomic writes, so "right after the first checkpoint" and "mid-write, before the rename" are
exact places in the code, not timings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from core.files import KILL_AT

ROOT = Path(__file__).resolve().parents[2]


def entry_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of `make`: legacy Keras, fixed hash seed, no hub, quiet TF, MLflow in `tmp`."""
    env = {k: v for k, v in os.environ.items() if k != KILL_AT}
    env.update(TF_USE_LEGACY_KERAS="1", PYTHONHASHSEED="0", HF_HUB_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="3",
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def _tail(text: str, n: int = 25) -> str:
    return "\n".join(text.splitlines()[-n:])


def run(args: Sequence[str], env: dict[str, str], cwd: Path = ROOT, timeout: float = 600,
        expect: int = 0) -> subprocess.CompletedProcess:
    """Run `python <args>`; raise AssertionError with the output's tail unless it exits with `expect`."""
    done = subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != expect:
        raise AssertionError(f"python {' '.join(map(str, args))} exited {done.returncode}, expected {expect}\n"
                             f"--- stdout\n{_tail(done.stdout)}\n--- stderr\n{_tail(done.stderr)}")
    return done


def killed(args: Sequence[str], env: dict[str, str], at: str, cwd: Path = ROOT,
           timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python <args>` with the fault point `at` ("<moment>:<glob>[#n]", see core.files) armed; assert that
    the process died of SIGKILL there (not that it finished or failed)."""
    return run(args, {**env, KILL_AT: at}, cwd, timeout, expect=-signal.SIGKILL)


def kill_when(args: Sequence[str], env: dict[str, str], ready: Callable[[], bool], cwd: Path = ROOT,
              timeout: float = 600, poll: float = 0.02) -> None:
    """Start `python <args>`, SIGKILL it (and its children) as soon as `ready()` is true; fail if it ends first."""
    proc = subprocess.Popen([sys.executable, *args], env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"python {' '.join(map(str, args))} ended ({proc.returncode}) before the kill "
                                     f"point\n{_tail(proc.stderr.read())}")
            if time.monotonic() > deadline:
                raise AssertionError(f"python {' '.join(map(str, args))}: kill point not reached in {timeout} s")
            time.sleep(poll)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def visible(folder: Path) -> list[str]:
    """The names a reader sees in `folder` (hidden staging entries excluded), sorted."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []
