"""Ours against DeepCTR and FuxiCTR on the same k-fold splits of the real Criteo and Avazu samples.

    python -m benchmarks.ctr_bench [--datasets criteo avazu] [--folds 5] [--seeds 1] [--peers deepctr fuxictr]

For each data set and fold, `ranking.prepare` writes the fold (test = fold k, valid = 10% of the rest, the same
rows for every library), then:
    ours      python -m ranking.train's run_experiment: dcn (DCN-V2 matrix cross), dcn with the original vector
              cross (`dcn_vector`), the same network without cross layers (`dnn`), logistic_regression (C chosen
              on valid) and gbdt
    peers     benchmarks/peers/<lib>_run.py in its own virtualenv (.bench-venvs/<lib>, made by
              benchmarks/peers/setup_venvs.sh; never a project dependency) on the same parquet files: DCN, DNN, LR
Test AUC and log loss, mean and spread over folds x seeds, go to benchmarks/results/ctr_bench.md (and one JSON line
per fold and model to ctr_bench.jsonl). A peer whose virtualenv is absent is listed as not run.
The shared samples are read from ../shared/data (DASHCLIP_PUBLIC_DATA overrides); absent, the benchmark says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DASHCLIP_PUBLIC_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"
VENVS = ROOT / ".bench-venvs"
DATASETS = {
    "criteo": ("criteo", "wide_resdnn_criteo_avazu/criteo/train.csv"),
    "avazu": ("avazu", "wide_resdnn_criteo_avazu/avazu/train.csv"),
}


def prepare_fold(dataset: str, fold: int, folds: int, out: Path) -> Path:
    from ranking.prepare import PrepareConfig, prepare

    fmt, rel = DATASETS[dataset]
    prepare(PrepareConfig(input=str(SHARED / rel), format=fmt, out=str(out), folds=folds, fold=fold, seed=0,
                          valid_ratio=0.1))
    return out


def run_ours(folder: Path, seed: int, tmp: Path) -> dict[str, dict[str, float]]:
    from core.config import load_config
    from ranking.config import RankingConfig
    from ranking.train import run_experiment

    out = {}
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tmp}/mlflow.db")
    # (variant, models, overrides): the dcn network again with the original vector cross, and with no cross at all
    # (the DNN the peers also run)
    variants = (("", "[base_rate, logistic_regression, gbdt, dcn]", []),
                ("dcn_vector", "[dcn]", ["net.cross_type=vector"]),
                ("dnn", "[dcn]", ["net.cross_layers=0"]))
    for variant, models, extra in variants:
        cfg = load_config(RankingConfig, folder / "ranking.yaml",
                          [f"models={models}", f"seed={seed}", "plots=false", "bootstrap_samples=0",
                           f"checkpoint_dir={tmp / ('ckpt' + variant)}", "train.resume=false", "threads=2"] + extra)
        result = run_experiment(cfg)
        for name, r in result.models.items():
            out[variant or name] = {"auc": r.metrics["test/auc"], "logloss": r.metrics["test/logloss"],
                                    "fit_seconds": r.metrics.get("fit_seconds", float("nan"))}
    return out


def run_peer(lib: str, folder: Path, seed: int) -> dict[str, dict[str, float]] | str:
    python = VENVS / lib / "bin" / "python"
    if not (python.exists() and (VENVS / lib / ".ok").exists()):
        return f"no virtualenv {python.parent.parent} (run benchmarks/peers/setup_venvs.sh {lib})"
    script = ROOT / "benchmarks" / "peers" / f"{lib}_run.py"
    done = subprocess.run([str(python), str(script), str(folder), str(seed)], capture_output=True, text=True,
                          timeout=3600)
    if done.returncode:
        return f"{lib} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict], notes: list[str]) -> str:
    lines = ["# CTR benchmark: ours vs DeepCTR vs FuxiCTR", "",
             "Test AUC / log loss, mean ± std over folds x seeds (same k-fold rows for every library).", "",
             "| data set | library | model | runs | test AUC | test log loss |", "|---|---|---|---|---|---|"]
    keys = sorted({(r["dataset"], r["library"], r["model"]) for r in rows})
    for ds, lib, model in keys:
        sel = [r for r in rows if (r["dataset"], r["library"], r["model"]) == (ds, lib, model)]
        auc, ll = np.array([r["auc"] for r in sel]), np.array([r["logloss"] for r in sel])
        sd = (lambda a: f" ± {a.std(ddof=1):.4f}" if len(a) > 1 else "")
        lines.append(f"| {ds} | {lib} | {model} | {len(sel)} | {auc.mean():.4f}{sd(auc)} | {ll.mean():.4f}{sd(ll)} |")
    if notes:
        lines += ["", "Not run:"] + [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ctr_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", type=int, default=0, help="> 0: run only the first N folds (quick look)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--peers", nargs="*", default=["deepctr", "fuxictr"])
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"ctr_bench: the shared data folder {SHARED} is absent; nothing to measure")
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="ctr_bench_") as tmp_name:
        tmp = Path(tmp_name)
        for ds in args.datasets:
            for fold in range(args.only_folds or args.folds):
                folder = prepare_fold(ds, fold, args.folds, tmp / f"{ds}_fold{fold}")
                for seed in range(args.seeds):
                    started = time.time()
                    results = {"ours": run_ours(folder, seed, tmp / f"run_{ds}_{fold}_{seed}")}
                    for lib in args.peers:
                        got = run_peer(lib, folder, seed)
                        if isinstance(got, str):
                            notes.append(got)
                        else:
                            results[lib] = got
                    for lib, models in results.items():
                        for model, m in models.items():
                            row = {"dataset": ds, "fold": fold, "seed": seed, "library": lib, "model": model, **m}
                            rows.append(row)
                            with open(RESULTS / "ctr_bench.jsonl", "a") as fh:
                                fh.write(json.dumps(row) + "\n")
                    print(f"[ctr_bench] {ds} fold {fold} seed {seed}: {time.time() - started:.0f} s", flush=True)
                    (RESULTS / "ctr_bench.md").write_text(summarise(rows, notes))
    print(summarise(rows, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
