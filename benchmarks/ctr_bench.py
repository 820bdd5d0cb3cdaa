"""Ours against DeepCTR and FuxiCTR on the same k-fold splits of the real Criteo and Avazu samples.

    python -m benchmarks.ctr_bench [--datasets criteo avazu] [--folds 5] [--seeds 3] [--peers deepctr fuxictr]
                                   [--only-folds K ...] [--set key=value ...] [--cache DIR] [--cached-only]
    python -m benchmarks.ctr_bench --throughput [--rows 500000] [--rounds 3] [--epochs 1] [--peers ...]

(a) Accuracy. For each data set and fold, `ranking.prepare` writes the fold (test = fold k, valid = 10% of the rest,
the same rows for every library; its ranking.yaml is our config, --set adds overrides), then for every seed:
    ours      ranking.train's run_experiment: dcn (DCN-V2 matrix cross), dcn with the original vector cross
              (`dcn_vector`), the same network without cross layers (`dnn`), logistic_regression (C chosen on
              valid), gbdt and the base rate
    peers     benchmarks/peers/<lib>_run.py in its own virtualenv (.bench-venvs/<lib>, made by
              benchmarks/peers/setup_venvs.sh; never a project dependency) on the same parquet files: DCN, DNN, LR
Each (data set, fold, seed, library) run is one JSON file under --cache (default benchmarks/results/ctr_runs),
written atomically when the run ends: an interrupted bench resumes where it stopped, and a rerun with everything
cached only summarises (--cached-only summarises what is cached and runs nothing). Runs go seed by seed (all folds
of seed 0 first), so a partial bench is already paired. A cached run of ours made with other --set overrides is run
again. The summary, benchmarks/results/ctr_bench.md
(and JSON lines in ctr_bench.jsonl), gives per library and model the mean ± sd of test AUC and log loss over
folds x seeds, and the PAIRED differences ours - peer (dcn and dcn_vector vs the peer's DCN, dnn vs DNN,
logistic_regression vs LR) over the (fold, seed) pairs both ran: mean, its standard error (sd / sqrt(pairs)) and
the verdict "ours >= peer - 1 SE" (mean AUC difference >= -SE).

(b) Throughput (--throughput). The Criteo sample replicated to --rows rows; in each replica after the first, half
of the rows (drawn per replica) get the replica index appended to every categorical value, so the vocabulary grows
with the rows like a real log's (prepared with min_count 1, all rows train). The same DCN in every library:
embedding 16, vector cross x3 || deep (256, 128), batch 4096, Adam, 2 threads (TF intra-op, torch.set_num_threads).
Rounds alternate the libraries (ours, deepctr, fuxictr, ours, ...), each run a fresh process that times only its
training epochs with perf_counter around the fit (model built and compiled, data loaded, before the clock starts;
graph tracing of the first step inside it, as a user's fit has it): ours model.fit over ranking.pipeline, DeepCTR
model.fit on its numpy inputs, FuxiCTR its train_step over its batches (its fit loop without the validation).
Reported: every run's examples/s, the median per library and ours / peer.
(c) In our last round's process: our step's GFLOP/s (matmul FLOPs per example x examples/s, the default matrix-
cross dcn on the same data, the fit and the compiled step on one cached batch) against the measured matmul roof,
with benchmarks.ranking_bench's matmul_roof and train_rates.
The shared samples are read from ../shared/data (DASHCLIP_PUBLIC_DATA overrides); absent, the benchmark says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from core.files import read_json_object, write_text_atomically

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DASHCLIP_PUBLIC_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"
VENVS = ROOT / ".bench-venvs"
DATASETS = {
    "criteo": ("criteo", "wide_resdnn_criteo_avazu/criteo/train.csv"),
    "avazu": ("avazu", "wide_resdnn_criteo_avazu/avazu/train.csv"),
}
# (our model, the peer's model) compared pairwise
COMPARISONS = (("dcn", "dcn"), ("dcn_vector", "dcn"), ("dnn", "dnn"), ("logistic_regression", "lr"))
# the DCN of the throughput part: what both peers' DCN is (benchmarks/peers/*_run.py use the same numbers)
THROUGHPUT_NET = ["net.id_embedding_dim=16", "net.cross_type=vector", "net.cross_layers=3",
                  "net.deep_layers=[256, 128]", "train.batch_size=4096"]


class CacheError(ValueError):
    """A cached run file that cannot be read."""


def prepare_fold(dataset: str, fold: int, folds: int, out: Path) -> Path:
    from ranking.prepare import PrepareConfig, prepare

    fmt, rel = DATASETS[dataset]
    prepare(PrepareConfig(input=str(SHARED / rel), format=fmt, out=str(out), folds=folds, fold=fold, seed=0,
                          valid_ratio=0.1))
    return out


def run_ours(folder: Path, seed: int, tmp: Path, overrides: list[str]) -> dict[str, dict[str, float]]:
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
                           f"checkpoint_dir={tmp / ('ckpt' + variant)}", "train.resume=false", "threads=2"]
                          + list(overrides) + extra)
        result = run_experiment(cfg)
        for name, r in result.models.items():
            out[variant or name] = {"auc": r.metrics["test/auc"], "logloss": r.metrics["test/logloss"],
                                    "fit_seconds": r.metrics.get("fit_seconds", float("nan"))}
    return out


def peer_python(lib: str) -> Path | str:
    """The peer's interpreter, or why it cannot run."""
    python = VENVS / lib / "bin" / "python"
    if not (python.exists() and (VENVS / lib / ".ok").exists()):
        return f"no virtualenv {python.parent.parent} (run benchmarks/peers/setup_venvs.sh {lib})"
    return python


def run_peer(lib: str, folder: Path, seed: int, *extra: str) -> dict | str:
    """The peer runner's JSON line, or what went wrong."""
    python = peer_python(lib)
    if isinstance(python, str):
        return python
    script = ROOT / "benchmarks" / "peers" / f"{lib}_run.py"
    done = subprocess.run([str(python), str(script), str(folder), str(seed), *extra], capture_output=True,
                          text=True, timeout=3600)
    if done.returncode:
        return f"{lib} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- the run cache


def run_path(cache: Path, dataset: str, folds: int, fold: int, seed: int, library: str) -> Path:
    return cache / f"{dataset}-k{folds}-fold{fold}-seed{seed}-{library}.json"


def cached_run(path: Path, overrides: list[str]) -> dict | None:
    """The stored run at `path`, or None when there is none or it was made with other overrides of ours."""
    if not path.exists():
        return None
    record = read_json_object(path, CacheError)
    if record.get("library") == "ours" and record.get("overrides", []) != list(overrides):
        return None
    return record


def store_run(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(record, indent=1, sort_keys=True))


def rows_of(records: list[dict]) -> list[dict]:
    """One row per (data set, fold, seed, library, model) from the stored runs."""
    return [{"dataset": r["dataset"], "fold": r["fold"], "seed": r["seed"], "library": r["library"],
             "model": model, **m} for r in records for model, m in sorted(r["models"].items())]


# ---------------------------------------------------------------------------------------------- statistics


def paired_differences(rows: list[dict], dataset: str, ours: str, peer: str, peer_model: str,
                       metric: str) -> list[float]:
    """ours - peer of `metric` for each (fold, seed) both ran on `dataset`, in (fold, seed) order."""
    def by_run(lib, model):
        return {(r["fold"], r["seed"]): r[metric] for r in rows
                if r["dataset"] == dataset and r["library"] == lib and r["model"] == model}

    a, b = by_run("ours", ours), by_run(peer, peer_model)
    return [a[k] - b[k] for k in sorted(a.keys() & b.keys())]


def paired_summary(diffs: list[float]) -> dict:
    """Mean difference, its standard error (sd / sqrt(n), NaN for one pair) and whether mean >= -SE."""
    n = len(diffs)
    mean = float(np.mean(diffs)) if n else float("nan")
    se = float(np.std(diffs, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"pairs": n, "mean": mean, "se": se, "ok": bool(n > 1 and mean >= -se)}


def paired_table(rows: list[dict]) -> list[dict]:
    """Every comparison with pairs: data set, ours, peer, the AUC and log-loss paired summaries."""
    out = []
    peers = sorted({r["library"] for r in rows} - {"ours"})
    for ds in sorted({r["dataset"] for r in rows}):
        for peer in peers:
            for ours, peer_model in COMPARISONS:
                auc = paired_summary(paired_differences(rows, ds, ours, peer, peer_model, "auc"))
                if auc["pairs"]:
                    ll = paired_summary(paired_differences(rows, ds, ours, peer, peer_model, "logloss"))
                    out.append({"dataset": ds, "ours": ours, "peer": peer, "peer_model": peer_model, "auc": auc,
                                "logloss": ll})
    return out


def _mean_sd(values: list[float]) -> str:
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.4f} ± {a.std(ddof=1):.4f}" if len(a) > 1 else f"{a.mean():.4f}"


def _signed(summary: dict) -> str:
    se = "" if np.isnan(summary["se"]) else f" ± {summary['se']:.4f}"
    return f"{summary['mean']:+.4f}{se}"


def summarise(rows: list[dict], notes: list[str], header: str = "", throughput: dict | None = None) -> str:
    lines = ["# CTR benchmark: ours vs DeepCTR vs FuxiCTR", ""]
    if header:
        lines += [header, ""]
    lines += ["## (a) Test AUC and log loss", "",
              "Mean ± sd over folds x seeds (the same k-fold rows for every library).", "",
              "| data set | library | model | runs | test AUC | test log loss |", "|---|---|---|---|---|---|"]
    for ds, lib, model in sorted({(r["dataset"], r["library"], r["model"]) for r in rows}):
        sel = [r for r in rows if (r["dataset"], r["library"], r["model"]) == (ds, lib, model)]
        lines.append(f"| {ds} | {lib} | {model} | {len(sel)} | {_mean_sd([r['auc'] for r in sel])} | "
                     f"{_mean_sd([r['logloss'] for r in sel])} |")
    paired = paired_table(rows)
    if paired:
        lines += ["", "Paired differences ours - peer over the (fold, seed) runs both made: mean ± standard error "
                  "(sd of the differences / sqrt(pairs)). Verdict: ours >= peer - 1 SE, i.e. mean AUC difference "
                  ">= -SE. Log loss: lower is better.", "",
                  "| data set | ours | peer | pairs | Δ test AUC | ours >= peer - 1 SE | Δ test log loss |",
                  "|---|---|---|---|---|---|---|"]
        for p in paired:
            verdict = "yes" if p["auc"]["ok"] else ("no" if p["auc"]["pairs"] > 1 else "n/a (1 pair)")
            lines.append(f"| {p['dataset']} | {p['ours']} | {p['peer']} {p['peer_model']} | {p['auc']['pairs']} | "
                         f"{_signed(p['auc'])} | {verdict} | {_signed(p['logloss'])} |")
    if throughput:
        lines += ["", throughput_markdown(throughput)]
    if notes:
        lines += ["", "Not run:"] + [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- (a) accuracy


def accuracy(args, cache: Path) -> tuple[list[dict], list[str]]:
    """Every (data set, fold, seed, library) run, from the cache or run now and stored."""
    records, notes, missing = [], [], 0
    started_all = time.time()
    with tempfile.TemporaryDirectory(prefix="ctr_bench_") as tmp_name:
        tmp = Path(tmp_name)
        for seed in range(args.seeds):
            for fold in args.only_folds or range(args.folds):
                for ds in args.datasets:
                    folder = tmp / f"{ds}_fold{fold}"
                    for lib in ["ours", *args.peers]:
                        path = run_path(cache, ds, args.folds, fold, seed, lib)
                        record = cached_run(path, args.set)
                        if record is None and args.cached_only:
                            missing += 1
                            continue
                        if record is None:
                            if not folder.exists():
                                prepare_fold(ds, fold, args.folds, folder)
                            started = time.time()
                            got = (run_ours(folder, seed, tmp / f"run_{ds}_{fold}_{seed}", args.set)
                                   if lib == "ours" else run_peer(lib, folder, seed))
                            if isinstance(got, str):
                                notes.append(got)
                                continue
                            record = {"dataset": ds, "folds": args.folds, "fold": fold, "seed": seed, "library": lib,
                                      "models": got, "seconds": round(time.time() - started, 1),
                                      "load_avg_1min": round(os.getloadavg()[0], 2),
                                      "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                            if lib == "ours":
                                record["overrides"] = list(args.set)
                            store_run(path, record)
                            print(f"[ctr_bench] {ds} fold {fold} seed {seed} {lib}: {record['seconds']:.0f} s "
                                  f"(load {record['load_avg_1min']}; {time.time() - started_all:.0f} s so far)",
                                  flush=True)
                        records.append(record)
    if missing:
        notes.append(f"{missing} of the {missing + len(records)} runs asked for are not cached yet (--cached-only)")
    return records, notes


def record_summary(rows: list[dict], config: str) -> None:
    """The summary as JSON lines in benchmarks/results/ctr_bench.jsonl."""
    from benchmarks.common import record

    for ds, lib, model in sorted({(r["dataset"], r["library"], r["model"]) for r in rows}):
        sel = [r for r in rows if (r["dataset"], r["library"], r["model"]) == (ds, lib, model)]
        auc = np.array([r["auc"] for r in sel])
        record("ctr_bench", "test_auc", round(float(auc.mean()), 4), "AUC", f"{ds}, {lib} {model}, {config}",
               runs=len(sel), sd=round(float(auc.std(ddof=1)), 4) if len(sel) > 1 else None,
               logloss=round(float(np.mean([r["logloss"] for r in sel])), 4))
    for p in paired_table(rows):
        record("ctr_bench", "paired_auc_difference", round(p["auc"]["mean"], 4), "AUC",
               f"{p['dataset']}, ours {p['ours']} - {p['peer']} {p['peer_model']}, {config}", pairs=p["auc"]["pairs"],
               se=round(p["auc"]["se"], 4), ours_at_least_peer_minus_1se=p["auc"]["ok"],
               logloss_difference=round(p["logloss"]["mean"], 4), logloss_se=round(p["logloss"]["se"], 4))


# ---------------------------------------------------------------------------------------------- (b), (c) speed


def replicate_criteo(src: Path, out: Path, rows: int, share: float = 0.5, seed: int = 0) -> Path:
    """The Criteo log repeated to `rows` rows; in replica r >= 1 a `share` of the rows (drawn per replica) get
    `_r` appended to every non-empty categorical value, so the vocabulary grows with the rows."""
    lines = src.read_text().splitlines()
    rng = np.random.default_rng(seed)
    with open(out, "w") as fh:
        for r in range(-(-rows // len(lines))):
            fresh = rng.random(len(lines)) < share if r else np.zeros(len(lines), bool)
            for line, suffix in zip(lines[:rows - r * len(lines)], fresh):
                if suffix:
                    f = line.split("\t")
                    line = "\t".join(f[:14] + [v + f"_{r}" if v else v for v in f[14:]])
                fh.write(line + "\n")
    return out


def prepare_throughput(rows: int, tmp: Path) -> Path:
    from ranking.prepare import PrepareConfig, prepare

    log = replicate_criteo(SHARED / DATASETS["criteo"][1], tmp / "criteo_replicated.txt", rows)
    out = tmp / "criteo_replicated"
    prepare(PrepareConfig(input=str(log), format="criteo", out=str(out), valid_ratio=0.001, test_ratio=0.001,
                          min_count=1))
    return out


def ours_throughput(folder: Path, epochs: int, threads: int, roof: bool) -> dict:
    """Our DCN (THROUGHPUT_NET) trained `epochs` epochs on the folder's train split: examples/s of model.fit;
    with `roof`, also (c): ranking_bench's train_rates of the default dcn and matmul_roof."""
    from benchmarks import ranking_bench
    from core.config import load_config
    from ranking.config import RankingConfig
    from ranking.fit import compile_model
    from ranking.models import build_model
    from ranking.pipeline import make_dataset
    from ranking.preprocessing import fit_preprocessing
    from ranking.tf_legacy_keras import tf
    from ranking.training_set import load_training_set

    ranking_bench._setup_threads(threads)
    cfg = load_config(RankingConfig, folder / "ranking.yaml", THROUGHPUT_NET)
    data = load_training_set(folder, cfg.features, use_embeddings=False)
    train = data["train"]
    prep = fit_preprocessing(train, data.spec, cfg.features, data.impute_values)
    tf.keras.utils.set_random_seed(0)
    model = build_model("dcn", data.spec, prep, cfg.net)
    compile_model(model, cfg.train)
    ds = make_dataset(train, data.spec, cfg.train.batch_size, shuffle=True)
    started = time.perf_counter()
    model.fit(ds, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - started
    out = {"examples": epochs * len(train), "seconds": seconds, "examples_per_s": epochs * len(train) / seconds,
           "vocabulary": int(sum(len(v) for v in prep.vocabularies.values()))}
    if roof:
        best, median, step, flops, _ = ranking_bench.train_rates("dcn", train, data.spec, prep,
                                                                 cfg.train.batch_size, 16, "lazy_adam", 0,
                                                                 windows=3, profile=False)
        top = max(ranking_bench.matmul_roof(), ranking_bench.matmul_roof(1.5))
        out["roof"] = {"matmul_gflops": top, "mflop_per_example": flops / 1e6, "fit_examples_per_s": best,
                       "fit_examples_per_s_median": median, "step_examples_per_s": step,
                       "fit_gflops": best * flops / 1e9, "step_gflops": step * flops / 1e9,
                       "fit_roof_fraction": best * flops / 1e9 / top, "step_roof_fraction": step * flops / 1e9 / top}
    return out


def run_ours_throughput(folder: Path, epochs: int, threads: int, roof: bool) -> dict | str:
    """ours_throughput in a fresh process (like the peers' runs), its JSON line or what went wrong."""
    command = [sys.executable, "-m", "benchmarks.ctr_bench", "--throughput-worker", str(folder),
               "--epochs", str(epochs), "--threads", str(threads)] + (["--roof"] if roof else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    if done.returncode:
        return f"ours failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def throughput(args, tmp: Path) -> dict:
    """Alternating rounds of every library on the replicated Criteo rows; see the module docstring."""
    folder = prepare_throughput(args.rows, tmp)
    meta = json.loads((folder / "metadata.json").read_text())
    libs = ["ours", *args.peers]
    runs: dict[str, list[dict]] = {lib: [] for lib in libs}
    notes, roof = [], None
    for round_ in range(args.rounds):
        for lib in libs:
            last = round_ == args.rounds - 1
            got = (run_ours_throughput(folder, args.epochs, args.threads, roof=last) if lib == "ours" else
                   run_peer(lib, folder, 0, "--throughput", str(args.epochs), "--threads", str(args.threads)))
            if isinstance(got, str):
                notes.append(got)
                continue
            got["load_avg_1min"] = round(os.getloadavg()[0], 2)
            roof = got.pop("roof", roof)
            runs[lib].append(got)
            print(f"[ctr_bench] throughput round {round_} {lib}: {got['examples_per_s']:.0f} examples/s "
                  f"(load {got['load_avg_1min']})", flush=True)
    medians = {lib: statistics.median(r["examples_per_s"] for r in rs) for lib, rs in runs.items() if rs}
    return {"rows": meta["rows"]["train"], "vocabulary": sum(meta["vocab_sizes"].values()), "epochs": args.epochs,
            "threads": args.threads, "rounds": args.rounds, "runs": runs, "medians": medians,
            "ratios": {lib: medians["ours"] / m for lib, m in medians.items() if lib != "ours" and "ours" in medians},
            "roof": roof, "notes": notes, "uptime": uptime(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def throughput_markdown(t: dict) -> str:
    lines = ["## (b) Training throughput of the same DCN", "",
             f"Criteo sample replicated to {t['rows']:,} training rows (vocabulary {t['vocabulary']:,} ids), "
             f"embedding 16, vector cross x3 || deep (256, 128), batch 4096, Adam, {t['threads']} threads, "
             f"{t['epochs']} epoch(s) per run; {t['rounds']} alternating rounds; each run a fresh process timing its "
             f"training epochs only. Measured {t['when']}, {t['uptime']}.", "",
             "| library | examples/s per round | median | ours / library |", "|---|---|---|---|"]
    for lib, rs in t["runs"].items():
        if rs:
            ratio = "" if lib == "ours" else f"{t['ratios'][lib]:.2f}x"
            rounds = ", ".join(f"{r['examples_per_s']:,.0f} (load {r['load_avg_1min']})" for r in rs)
            lines.append(f"| {lib} | {rounds} | {t['medians'][lib]:,.0f} | {ratio} |")
    r = t.get("roof")
    if r:
        lines += ["", "## (c) Our step against the matmul roof", "",
                  f"The default dcn (DCN-V2 full-rank matrix cross) on the same rows, {r['mflop_per_example']:.3f} "
                  f"MFLOP of matmuls per example; measured matmul roof {r['matmul_gflops']:.1f} GFLOP/s "
                  "(benchmarks.ranking_bench.matmul_roof, train_rates).", "",
                  "| | examples/s | GFLOP/s | share of roof |", "|---|---|---|---|",
                  f"| model.fit over the pipeline (best window; median {r['fit_examples_per_s_median']:,.0f}) | "
                  f"{r['fit_examples_per_s']:,.0f} | {r['fit_gflops']:.1f} | {r['fit_roof_fraction']:.3f} |",
                  f"| the compiled step on one cached batch | {r['step_examples_per_s']:,.0f} | {r['step_gflops']:.1f} "
                  f"| {r['step_roof_fraction']:.3f} |"]
    if t["notes"]:
        lines += ["", "Throughput runs that failed:"] + [f"- {n}" for n in dict.fromkeys(t["notes"])]
    return "\n".join(lines)


def uptime() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ctr_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only-folds", nargs="+", type=int, metavar="FOLD",
                        help="run only these folds (a quick look; or a bench split across processes)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--peers", nargs="*", default=["deepctr", "fuxictr"])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of our ranking.yaml (e.g. net.embedding_l2=1e-5); use another --cache")
    parser.add_argument("--cache", type=Path, default=RESULTS / "ctr_runs", help="where the runs are stored")
    parser.add_argument("--cached-only", action="store_true",
                        help="summarise the cached runs without running the missing ones (a look at a partial bench)")
    parser.add_argument("--summary", type=Path, default=RESULTS / "ctr_bench.md")
    parser.add_argument("--throughput", action="store_true", help="(b) and (c) instead of (a)")
    parser.add_argument("--rows", type=int, default=500_000, help="throughput: replicated Criteo rows")
    parser.add_argument("--rounds", type=int, default=3, help="throughput: alternating rounds")
    parser.add_argument("--epochs", type=int, default=1, help="throughput: training epochs per run")
    parser.add_argument("--threads", type=int, default=2, help="throughput: threads of every library")
    parser.add_argument("--throughput-worker", type=Path, help=argparse.SUPPRESS)  # one of our throughput runs
    parser.add_argument("--roof", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if any(not 0 <= k < args.folds for k in args.only_folds or ()):
        parser.error(f"--only-folds: each fold must lie in [0, {args.folds}) (--folds {args.folds})")
    if args.throughput_worker:
        print(json.dumps(ours_throughput(args.throughput_worker, args.epochs, args.threads, args.roof)), flush=True)
        return 0
    if not SHARED.is_dir():
        print(f"ctr_bench: the shared data folder {SHARED} is absent; nothing to measure")
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved = RESULTS / "ctr_throughput.json"
    if args.throughput:
        with tempfile.TemporaryDirectory(prefix="ctr_throughput_") as tmp:
            measured = throughput(args, Path(tmp))
        write_text_atomically(saved, json.dumps(measured, indent=1))
        print(throughput_markdown(measured))
        return 0
    records, notes = accuracy(args, args.cache)
    rows = rows_of(records)
    loads = [r["load_avg_1min"] for r in records if "load_avg_1min" in r]
    header = (f"{args.folds} folds x {args.seeds} seeds ({len(records)} runs); our overrides: "
              f"{' '.join(args.set) or 'none'} (config: each fold's ranking.yaml from ranking.prepare). "
              f"Load average (1 min) at the end of each run: median {statistics.median(loads) if loads else 'n/a'}, "
              f"max {max(loads) if loads else 'n/a'}; summarised {uptime()}.")
    thr = read_json_object(saved, CacheError) if saved.exists() and args.summary == RESULTS / "ctr_bench.md" else None
    text = summarise(rows, notes, header, thr)
    write_text_atomically(args.summary, text)
    record_summary(rows, f"{args.folds} folds x {args.seeds} seeds, overrides {' '.join(args.set) or 'none'}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
