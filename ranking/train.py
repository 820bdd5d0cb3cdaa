"""Train the pCTR models and the baselines on one training set and compare them in MLflow.

    python -m ranking.train --config experiments/configs/ranking/demo.yaml [--seeds 3] [key=value ...]

One MLflow parent run per invocation (experiment `pctr-ranking`, run name = config `name`) and one child run per
model, named and tagged `model=<config name>` (dcn, dashclip_two_tower, logistic_regression, gbdt, historical_ctr,
base_rate, ...). A child holds the model's params, per-epoch curves (`epoch/*`, neural models), final metrics
`<split>/<metric>` and `<split>/<metric>/<slice>`, the oracle's share of the gap (`test/oracle_gap_closed`), ROC and
calibration plots. With several seeds each seed gets a grandchild run and the child holds the mean (`test/auc`)
and the spread (`test/auc_std`). Every model also gets its AUC gain over `baseline` (dcn), overall and on the
`gain_slices`: `test/auc_gain_vs_dcn[/<slice>]`, mean ± std over paired seeds, and a paired bootstrap 95% interval
over test requests (`_ci_low`, `_ci_high`), so a slice gain can be told from seed noise and from a small slice.
The gain slice `product_history` stands for every product-history bucket (slices.product_history_edges): the
cold-start curve, the gain against how many impressions the feature store had seen of the product.
The parent holds the resolved config, the data and embedding versions, and the comparison and gains tables (also
printed). A run that raises is marked FAILED (KILLED on Ctrl-C), never left RUNNING. At the end the model named
by `export_model` is exported as a SavedModel (`<export_dir>/<model>/<version>/`), reloaded and checked to give
the same predictions (ranking/serving/contract.py).

Killed and rerun: the neural models resume from their checkpoints (`<checkpoint_dir>/<name>/<model>/seed<k>/`,
ranking/fit.py) and end with the weights and metrics of an uninterrupted run. SIGKILL cannot be caught, so the
killed invocation's MLflow runs stay RUNNING until the same command runs again: it continues those very runs
(their ids are in `<checkpoint_dir>/<name>/mlflow_runs.json` while the parent is open), adds the epochs the kill
kept it from logging, and ends them FINISHED; a rerun with another config marks them KILLED and opens new ones.
One invocation at a time per checkpoint folder: a second one with the same name and checkpoint_dir (it would
resume the first one's half-trained checkpoints and overwrite them) exits 2 with `error: checkpoint folder ... is
in use by another ranking.train (pid N) ...`; runs with another name or checkpoint_dir train side by side.

Several workers (train.strategy=multi_worker, TF_CONFIG set in each process; docs/scaling.md) run this same command:
every worker trains the neural models in the same order on its share of each global batch; the chief alone fits
the baselines, evaluates, writes checkpoints, exports and logs to MLflow (the others log nothing).

Every input check (missing feature, NaN policy, embedding width, empty split, unknown config key) runs before
the first run is opened. MLflow: `sqlite:///mlruns/mlflow.db` unless MLFLOW_TRACKING_URI says otherwise;
`mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db` shows the comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Metric

from core import metrics
from core.config import ConfigError, add_config_args, config_to_dict, exit_on, load_config
from core.files import locked, write_text_atomically
from core.tracking import flatten, setup_mlflow, tracking_uri
from ranking.baselines import make_baseline, required_columns
from ranking.calibration import fit_calibration, logit, sigmoid
from ranking.config import MODEL_KINDS, NEURAL, RankingConfig
from ranking.preprocessing import Preprocessing, fit_preprocessing
from ranking.report import (HEADLINE, calibration_figure, close_figures, comparison_table, gains_figure, gains_table,
                            load_oracle, oracle_world, roc_figure, skipped_evaluations, skipped_note, split_metrics)
from ranking.slices import expand_slices, skipped_slices, slice_masks
from ranking.training_set import TrainingSet, TrainingSetError, load_training_set, resolve_training_set

DETERMINISTIC = ("base_rate", "historical_ctr")  # fitted once whatever `seeds` says
TABLE_COLUMNS = ["test/auc", "test/logloss", "test/ne", "test/calibration", "test/gauc_request", "test/gauc_user",
                 "test/rela_impr_vs_dcn", "test/oracle_gap_closed", "test/auc/query_tail", "test/auc/product_new",
                 "test/auc/product_cold", "test/auc/user_history", "fit_seconds"]


@dataclass
class ModelResult:
    """One model's outcome: its child run, metrics (mean over seeds, `<key>_std` spread), seed-0 test scores."""

    name: str
    run_id: str
    metrics: dict[str, float]
    test_scores: np.ndarray
    model: Any = None  # the seed-0 neural model (kept only for the export)
    per_seed: list[dict[str, float]] = field(default_factory=list)  # each seed's metrics, in seed order


@dataclass
class ExperimentResult:
    parent_run_id: str
    models: dict[str, ModelResult]
    table: str
    export_path: Path | None = None
    gains: str = ""  # the AUC-gain table (empty without the baseline)


# ---------------------------------------------------------------------------------------------- one model


def _checkpoint_root(cfg: RankingConfig) -> Path:
    if cfg.checkpoint_dir:
        return Path(cfg.checkpoint_dir)
    if cfg.training_set:  # a user's own training set: beside it, never inside the default world's folder
        return Path(cfg.training_set) / "checkpoints" / "ranking"
    return Path(cfg.data) / "checkpoints" / "ranking"


class CheckpointInUse(ConfigError):
    """Another live process holds the experiment's checkpoint folder."""


def exclusive_folder(folder: Path):
    """Hold `<folder>/.lock` for the block (core.files.locked). CheckpointInUse, naming the folder and the holder's
    pid, when another process holds it: two runs of one experiment would resume each other's half-trained
    checkpoints and write over them."""
    return locked(folder / ".lock", busy=lambda pid: CheckpointInUse(
        f"checkpoint folder {folder} is in use by another ranking.train (pid {pid}); wait for it to end, or give "
        f"this run another name or checkpoint_dir"))


def _run_status(client: mlflow.MlflowClient, run_id: str) -> str | None:
    try:
        return client.get_run(run_id).info.status
    except mlflow.exceptions.MlflowException:  # deleted, or recorded in another store
        return None


class RunRecord:
    """The MLflow runs of one invocation by label ("" the parent, "<model>", "<model>/seed<k>"), in
    `<checkpoint folder>/mlflow_runs.json` while the parent is open (removed by close()).

    A record found at the start means an invocation was killed (its lock is free, so no live process owns the runs
    it names). With the same config and store and its parent still RUNNING, this invocation continues those runs
    (mlflow.start_run(run_id=...)): they end with the whole history instead of staying RUNNING beside a second
    copy. Otherwise the RUNNING ones are marked KILLED and new runs are opened."""

    def __init__(self, path: Path, cfg: RankingConfig):
        self.path = path
        spec = json.dumps({"config": config_to_dict(cfg), "store": tracking_uri()}, sort_keys=True, default=str)
        self.key = hashlib.sha256(spec.encode()).hexdigest()[:16]
        self.previous = self._unfinished()
        self.runs = dict(self.previous)  # a continued run keeps its label even if this invocation is killed too

    def _unfinished(self) -> dict[str, str]:
        try:
            old = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        client = mlflow.MlflowClient()
        runs = old.get("runs", {}) if isinstance(old, dict) else {}
        running = [run_id for run_id in runs.values() if _run_status(client, run_id) == "RUNNING"]
        if old.get("key") == self.key and runs.get("") in running:
            return runs
        for run_id in running:
            client.set_terminated(run_id, "KILLED")
        return {}

    def start(self, label: str, **kwargs) -> mlflow.ActiveRun:
        """The run `label` of the killed invocation continued, else mlflow.start_run(**kwargs); recorded."""
        run_id = self.previous.get(label)
        run = mlflow.start_run(run_id=run_id, nested=bool(label)) if run_id else mlflow.start_run(**kwargs)
        self.runs[label] = run.info.run_id
        write_text_atomically(self.path, json.dumps({"key": self.key, "runs": self.runs}, indent=1) + "\n")
        return run

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


class SharedInputs:
    """What every model run of one experiment shares: the data, a train sample for train metrics, the slices, the
    oracle and the train-only preprocessing of the neural models."""

    def __init__(self, cfg: RankingConfig, data: TrainingSet, strategy=None):
        self.cfg, self.data = cfg, data
        self.strategy = strategy  # the tf.distribute strategy of the neural models (None: no neural model)
        train = data["train"]
        rows = np.arange(len(train))
        if cfg.eval_train_rows and len(train) > cfg.eval_train_rows:
            rows = np.sort(np.random.default_rng(cfg.seed).choice(len(train), cfg.eval_train_rows, replace=False))
        self.train_eval = train.take(rows)
        self.slices = {s: slice_masks(train, data[s], cfg.slices) for s in ("valid", "test")}
        self.oracle, oracle_note = _oracle(data)
        self.skipped = skipped_evaluations(data["test"], skipped_slices(train, data["test"]), oracle_note)
        self._prep = None
        self.runs: RunRecord | None = None  # set by run_experiment on the chief, before the first run opens

    def start_run(self, label: str, **kwargs) -> mlflow.ActiveRun:
        return self.runs.start(label, **kwargs) if self.runs is not None else mlflow.start_run(**kwargs)

    def preprocessing(self) -> Preprocessing:
        if self._prep is None:
            self._prep = fit_preprocessing(self.data["train"], self.data.spec, self.cfg.features,
                                           self.data.impute_values)
        return self._prep

    def evaluate(self, predict) -> tuple[dict[str, float], np.ndarray]:
        """All `<split>/<metric>[/<slice>]` values for predict(split) -> P(click), and the test scores."""
        out = {}
        for name, split in (("train", self.train_eval), ("valid", self.data["valid"]), ("test", self.data["test"])):
            p = predict(split)
            out.update(split_metrics(name, split.labels, p, split, self.slices.get(name),
                                     self.cfg.slices.min_count))
            if name == "test":
                test_scores = p
        return out, test_scores


def _oracle(data: TrainingSet) -> tuple[np.ndarray | None, str]:
    """The true click probabilities of the test rows from the training set's own world (metadata.json), and why
    there are none when there are none."""
    world = oracle_world(data.metadata, data.path)
    if world is None:
        return None, "the training set's metadata.json records no world (no ground truth)"
    if "impression_id" not in data["test"].columns:
        return None, "no impression_id column to join the world's truth on"
    oracle = load_oracle(world, data["test"].columns["impression_id"])
    if oracle is None:
        return None, f"its world {world} has no impression truth covering the test rows"
    return oracle, ""


def _data_dir(cfg: RankingConfig, data: TrainingSet) -> Path:
    """data/<name>/ of the training set (where hidden/ lives)."""
    if cfg.training_set:
        parent = data.path.parent
        return parent.parent if parent.name == "training_sets" else Path(cfg.data)
    return Path(cfg.data)


def _fit_baseline(name: str, seed: int, shared: SharedInputs):
    """Fit on train; then, like the neural models, Platt-calibrate on valid (base_rate stays the train CTR)."""
    started = time.perf_counter()
    model = make_baseline(name, shared.cfg.baselines).fit(shared.data, seed)
    a, b = 1.0, 0.0
    kind = shared.cfg.train.calibration
    if kind != "none" and name != "base_rate":
        a, b = fit_calibration(logit(model.predict(shared.data["valid"])), shared.data["valid"].labels, kind)
    seconds = time.perf_counter() - started

    def predict(split):
        return sigmoid(a * logit(model.predict(split)) + b)

    values, test_scores = shared.evaluate(predict)
    values.update({"fit_seconds": seconds, "calibration_a": a, "calibration_b": b})
    return values, test_scores, None


def _train_neural(name: str, seed: int, shared: SharedInputs, on_epoch=None):
    """(model, FitResult, checkpoint folder): built and compiled in the strategy's scope, then trained (this
    worker's share)."""
    from ranking.fit import compile_model, fit_model
    from ranking.models import build_model
    from ranking.tf_legacy_keras import tf

    cfg = shared.cfg
    tf.keras.utils.set_random_seed(seed)
    with shared.strategy.scope():
        model = build_model(name, shared.data.spec, shared.preprocessing(), cfg.net)
        compile_model(model, cfg.train)
    ckpt = _checkpoint_root(cfg) / cfg.name / name / f"seed{seed}"
    return model, fit_model(model, shared.data, cfg.train, seed, ckpt, on_epoch), ckpt


def _fit_neural(name: str, seed: int, shared: SharedInputs):
    # TensorFlow only in runs that train a neural model: a baselines-only run never imports it.
    from ranking.fit import local_copy, predict
    from ranking.models import matmul_flops_per_example

    cfg = shared.cfg

    def on_epoch(epoch: int, row: dict) -> None:
        mlflow.log_metrics(row, step=epoch)
        print(f"  [{name} seed {seed}] epoch {epoch}: loss {row['epoch/train_loss']:.4f}  valid auc "
              f"{row['epoch/valid_auc']:.4f}  logloss {row['epoch/valid_logloss']:.4f}  "
              f"{row['epoch/train_examples_per_s']:.0f} examples/s", flush=True)

    model, fit, ckpt = _train_neural(name, seed, shared, on_epoch)
    if cfg.train.strategy != "default":  # evaluate and export a plain copy: no collectives on the chief alone
        model = local_copy(model)
    if fit.resumed_from:
        print(f"  [{name} seed {seed}] resumed from the checkpoint after epoch {fit.resumed_from} ({ckpt})")
        mlflow.set_tag("resumed_from_epoch", fit.resumed_from)
        _log_missing_epochs(fit.restored_history)
    values, test_scores = shared.evaluate(
        lambda split: predict(model, split, shared.data.spec, cfg.train.eval_batch_size))
    values.update({"fit_seconds": fit.seconds, "best_epoch": fit.best_epoch, "epochs_run": fit.epochs_run,
                   "calibration_a": fit.calibration[0], "calibration_b": fit.calibration[1],
                   "matmul_mflop_per_example": matmul_flops_per_example(model) / 1e6})
    if fit.epochs_run:
        values["train_examples_per_s"] = fit.train_examples_per_s
    return values, test_scores, model


def _log_missing_epochs(history: list[dict]) -> None:
    """Log the epochs of a resumed fit that the active run lacks: a kill after an epoch's checkpoint and before its
    MLflow row leaves that epoch out of the run, a new run has none of the earlier sessions' epochs."""
    run_id = mlflow.active_run().info.run_id
    logged = {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "epoch/valid_auc")}
    for row in history:
        if row["epoch"] not in logged:
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])


def _train_as_worker(shared: SharedInputs) -> None:
    """A worker other than the chief: the chief's sequence of neural fits (models, then seeds), nothing else."""
    from ranking.distribute import worker

    cfg = shared.cfg
    for name in cfg.models:
        if name in NEURAL:
            for k in range(cfg.seeds):
                print(f"[{name}] seed {cfg.seed + k}: training as worker {worker(shared.strategy)[0]}", flush=True)
                _train_neural(name, cfg.seed + k, shared)


def _aggregate(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Mean over seeds of every key; `<key>_std` (sample std) for the headline split metrics and the test AUC of
    every slice when seeds > 1."""
    keys = set().union(*per_seed)
    out = {}
    for k in sorted(keys):
        values = np.array([d[k] for d in per_seed if k in d], dtype=np.float64)
        out[k] = float(values.mean())
        spread = (k.count("/") == 1 and k.split("/")[1] in HEADLINE) or k.startswith("test/auc/") or k == "fit_seconds"
        if spread and len(values) > 1:
            out[f"{k}_std"] = float(values.std(ddof=1))
    return out


def _run_model(name: str, shared: SharedInputs) -> ModelResult:
    cfg = shared.cfg
    neural = name in NEURAL
    tags = {"model": name, "family": "neural" if neural else "baseline"}
    with shared.start_run(name, run_name=name, nested=True, tags=tags) as run:
        seeds = 1 if name in DETERMINISTIC else cfg.seeds
        params = {"model": name, "seeds": seeds, "seed": cfg.seed}
        if neural:
            params.update(flatten(config_to_dict(cfg.net), "net."))
            params.update(flatten(config_to_dict(cfg.train), "train."))
            params.update({"content": MODEL_KINDS[name]["content"], "history": MODEL_KINDS[name]["history"]})
        mlflow.log_params(params)
        per_seed, first_scores, first_model = [], None, None
        for k in range(seeds):
            seed = cfg.seed + k
            print(f"[{name}] seed {seed}: fitting", flush=True)
            nested = (shared.start_run(f"{name}/seed{seed}", run_name=f"{name}/seed{seed}", nested=True,
                                       tags={"parent_model": name, "seed": str(seed)})
                      if seeds > 1 else contextlib.nullcontext())
            with nested:
                values, scores, model = (_fit_neural if neural else _fit_baseline)(name, seed, shared)
                if seeds > 1:
                    mlflow.log_metrics(values)
            per_seed.append(values)
            if k == 0:
                first_scores = scores
                first_model = model if name == cfg.export_model else None
        if neural:  # what a later export needs to rebuild the seed-0 model: build_model + restore_final
            final = _checkpoint_root(cfg) / cfg.name / name / f"seed{cfg.seed}" / "final"
            mlflow.set_tag("checkpoint", str(final.resolve()))
            mlflow.log_dict({"kind": name, "feature_spec": shared.data.spec.to_dict(), "net": config_to_dict(cfg.net),
                             "preprocessing": shared.preprocessing().to_dict()}, "model_build.json")
        summary = _aggregate(per_seed)
        if shared.oracle is not None:
            summary["test/oracle_auc"] = metrics.auc(shared.data["test"].labels, shared.oracle)
        mlflow.log_metrics(summary)
        if cfg.plots:
            y = shared.data["test"].labels
            mlflow.log_figure(roc_figure({name: (y, first_scores)}, f"{name}: ROC on test"), "plots/roc_test.png")
            if first_scores.min() < first_scores.max():
                mlflow.log_figure(calibration_figure(y, first_scores, f"{name}: calibration on test"),
                                  "plots/calibration_test.png")
            close_figures()
        test_auc = summary["test/auc"]
        spread = f" ± {summary['test/auc_std']:.4f}" if "test/auc_std" in summary else ""
        print(f"[{name}] test auc {test_auc:.4f}{spread}  calibration {summary['test/calibration']:.3f}", flush=True)
        return ModelResult(name, run.info.run_id, summary, first_scores, first_model, per_seed)


# ---------------------------------------------------------------------------------------------- comparisons


def _cross_metrics(results: dict[str, ModelResult], shared: SharedInputs) -> dict[str, dict[str, float]]:
    """Metrics that need two models: RelaImpr against the named baselines, the share of the oracle gap closed
    and the AUC gain over `baseline` (overall and on gain_slices)."""
    cfg, out = shared.cfg, {name: {} for name in results}
    for base in cfg.rela_impr_baselines:
        if base not in results:
            continue
        for split in ("valid", "test"):
            base_auc = results[base].metrics[f"{split}/auc"]
            if abs(base_auc - 0.5) < 1e-9:
                continue
            for name, r in results.items():
                out[name][f"{split}/rela_impr_vs_{base}"] = metrics.rela_impr(r.metrics[f"{split}/auc"], base_auc)
    if cfg.baseline not in results:
        return out
    for name, gains in _gains({n: r for n, r in results.items() if n != cfg.baseline}, results[cfg.baseline],
                              shared).items():
        out[name].update(gains)
    if shared.oracle is not None:
        y = shared.data["test"].labels
        oracle = {"": metrics.auc(y, shared.oracle)}
        for slice_name, values in metrics.slice_metrics(y, shared.oracle, shared.slices["test"],
                                                        min_count=cfg.slices.min_count).items():
            oracle[slice_name] = values["auc"]
        base = results[cfg.baseline].metrics
        for name, r in results.items():
            for slice_name, oracle_auc in oracle.items():
                key = "test/auc" + (f"/{slice_name}" if slice_name else "")
                if key in r.metrics and key in base and abs(oracle_auc - base[key]) > 1e-12:
                    gap_key = "test/oracle_gap_closed" + (f"/{slice_name}" if slice_name else "")
                    out[name][gap_key] = metrics.oracle_gap_closed(r.metrics[key], base[key], oracle_auc)
    return out


def _gains(models: dict[str, ModelResult], base: ModelResult, shared: SharedInputs) -> dict[str, dict[str, float]]:
    """test/auc_gain_vs_<base>[/<slice>] of each model: the mean over paired seeds (seed k against the baseline's
    seed k, or its only run) with `_std`, and a paired bootstrap interval over test requests on seed 0's scores
    (every model on the same resamples, the baseline's AUC computed once per resample)."""
    cfg, test = shared.cfg, shared.data["test"]
    out: dict[str, dict[str, float]] = {name: {} for name in models}
    for slice_name in ("",) + expand_slices(cfg.gain_slices, cfg.slices):
        suffix = f"/{slice_name}" if slice_name else ""
        key, gain_key = f"test/auc{suffix}", f"test/auc_gain_vs_{base.name}{suffix}"
        present = {name: m for name, m in models.items() if all(key in s for s in m.per_seed + base.per_seed)}
        for name, model in present.items():  # a slice absent or too small is skipped
            gains = [m[key] - base.per_seed[min(k, len(base.per_seed) - 1)][key] for k, m in enumerate(model.per_seed)]
            out[name][gain_key] = float(np.mean(gains))
            if len(gains) > 1:
                out[name][f"{gain_key}_std"] = float(np.std(gains, ddof=1))
        if cfg.bootstrap_samples and present:
            rows = shared.slices["test"][slice_name] if slice_name else slice(None)
            intervals = metrics.auc_difference_cis(
                test.labels[rows], {name: m.test_scores[rows] for name, m in present.items()},
                base.test_scores[rows], n_boot=cfg.bootstrap_samples, seed=cfg.seed,
                groups=test.columns["request_id"][rows] if "request_id" in test.columns else None)
            for name, (_, low, high) in intervals.items():
                out[name][f"{gain_key}_ci_low"], out[name][f"{gain_key}_ci_high"] = low, high
    return out


def _oracle_row(shared: SharedInputs) -> dict[str, float]:
    """The true click probabilities scored like a model (the physical limit)."""
    test = shared.data["test"]
    return split_metrics("test", test.labels, shared.oracle, test, shared.slices["test"], shared.cfg.slices.min_count)


def _export(cfg: RankingConfig, shared: SharedInputs, result: ModelResult, parent_id: str) -> Path:
    """SavedModel of the seed-0 model; reload it and compare with the Keras model on test rows."""
    # TensorFlow only when a neural model was trained (export_model names one)
    from ranking.fit import predict
    from ranking.serving.contract import check_finite, export_model, load_serving_fn, serving_predict

    data = shared.data
    test = data["test"]
    rows = test.take(np.arange(min(len(test), 4096)))  # checked before the export, compared after it
    check_finite(result.model, rows.columns, f"MLflow run {result.run_id}", f"rows of {data.path}/test")
    path = export_model(result.model, cfg.export_dir, cfg.export_model, extra_assets={
        "mlflow_run_id": result.run_id, "mlflow_parent_run_id": parent_id, "embedding_version": data.embedding_version,
        "embedding_model": data.metadata.get("embedding_model", {}), "training_set": str(data.path),
        "nan_impute": dict(result.model.prep.impute)},  # the train means NaN dense inputs get (batch_score --nan)
        warmup=test.columns, progress=True)
    reloaded = serving_predict(load_serving_fn(path), rows.columns, data.spec)
    direct = predict(result.model, rows, data.spec)
    diff = float(np.max(np.abs(reloaded - direct)))
    client = mlflow.MlflowClient()
    client.log_metric(result.run_id, "export/max_abs_diff", diff)
    client.set_tag(result.run_id, "export_path", str(path))
    client.set_tag(parent_id, "export_path", str(path))
    client.log_artifacts(result.run_id, str(path), "saved_model")
    if diff > 1e-5:
        raise RuntimeError(f"export: the reloaded SavedModel at {path} differs from the trained model by {diff:.2e}")
    print(f"exported {cfg.export_model} to {path} (reload max |diff| {diff:.1e})", flush=True)
    return path


# ---------------------------------------------------------------------------------------------- entry point


def run_experiment(cfg: RankingConfig) -> ExperimentResult | None:
    """The whole experiment; see the module docstring. Input errors raise before any MLflow run exists.
    None on a worker other than the chief (it trains, the chief reports)."""
    folder = resolve_training_set(cfg.data, cfg.embedding_version, cfg.training_set)
    use_embeddings = any(MODEL_KINDS[m]["content"] != "none" for m in cfg.models if m in MODEL_KINDS)
    data = load_training_set(folder, cfg.features, use_embeddings=use_embeddings, max_rows=cfg.max_rows,
                             seed=cfg.seed)
    for name in cfg.models:
        missing = [c for c in required_columns(name, cfg.baselines, data["train"].columns)
                   if c not in data["train"].columns]
        if missing:
            raise TrainingSetError(f"baselines: {name} uses {', '.join(missing)}, which features.id_features "
                                   f"does not list")
    strategy = None
    if any(m in NEURAL for m in cfg.models):
        from ranking.distribute import is_chief, make_strategy
        from ranking.tf_legacy_keras import tf  # TensorFlow only when a neural model is trained

        if cfg.threads:
            tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
        strategy = make_strategy(cfg.train.strategy)  # before any other TF op (multi_worker needs that)
        if not is_chief(strategy):
            _train_as_worker(SharedInputs(cfg, data, strategy))
            return None
    experiment_folder = _checkpoint_root(cfg) / cfg.name
    with exclusive_folder(experiment_folder):
        shared = SharedInputs(cfg, data, strategy)
        print(f"training set {folder}: " + ", ".join(f"{s} {len(data[s]):,} rows" for s in data.splits) +
              f"; embedding_version {data.embedding_version}", flush=True)
        setup_mlflow(cfg.experiment)
        shared.runs = RunRecord(experiment_folder / "mlflow_runs.json", cfg)
        try:
            return _experiment(shared, folder)
        finally:
            shared.runs.close()


def _experiment(shared: SharedInputs, folder: Path) -> ExperimentResult:
    """The chief's part of run_experiment: the MLflow parent run, every model, the comparison and the export."""
    cfg, data = shared.cfg, shared.data
    tags = {"data_dir": str(_data_dir(cfg, data)), "training_set": str(folder),
            "embedding_version": data.embedding_version, "entry_point": "ranking.train",
            "embedding_model": json.dumps(data.metadata.get("embedding_model", {}), sort_keys=True)}
    if shared.runs.previous:
        print(f"continuing the MLflow runs of the killed invocation (parent {shared.runs.previous['']})", flush=True)
    with shared.start_run("", run_name=cfg.name, tags=tags) as parent:
        mlflow.log_params({k: (json.dumps(v) if isinstance(v, list) else v)
                           for k, v in flatten(config_to_dict(cfg)).items()})
        mlflow.log_params({f"rows_{s}": len(data[s]) for s in data.splits} |
                          {"embedding_dim": data.spec.embedding_dim, "n_dense": len(data.spec.dense),
                           "n_ids": len(data.spec.ids)})
        mlflow.log_dict(config_to_dict(cfg), "config.yaml")
        mlflow.log_dict({"feature_spec": data.spec.to_dict(), "metadata": data.metadata,
                         "nan_imputed": data.nan_counts}, "training_set.json")
        if shared.oracle is not None:
            mlflow.log_metrics({f"test/oracle_{k.split('/')[1]}": v for k, v in _oracle_row(shared).items()
                                if k.count("/") == 1})

        results = {name: _run_model(name, shared) for name in cfg.models}

        client = mlflow.MlflowClient()
        now = int(time.time() * 1000)
        for name, extra in _cross_metrics(results, shared).items():
            results[name].metrics.update(extra)
            if extra:
                client.log_batch(results[name].run_id, metrics=[Metric(k, v, now, 0) for k, v in extra.items()])
        rows = {name: r.metrics for name, r in results.items()}
        if shared.oracle is not None:
            rows["(oracle)"] = _oracle_row(shared)
        columns = [c for c in TABLE_COLUMNS if any(c in v for v in rows.values())]
        table = comparison_table(rows, columns)
        gain_rows = {name: r.metrics for name, r in results.items() if name != cfg.baseline}
        gain_slices = expand_slices(cfg.gain_slices, cfg.slices)
        gains = gains_table(gain_rows, cfg.baseline, gain_slices) if cfg.baseline in results else ""
        note = skipped_note(shared.skipped)
        if note:
            table = f"{table}\n\n{note}"
        print(f"\n{cfg.name}: {cfg.seeds} seed(s), {len(data['test']):,} test rows\n{table}\n", flush=True)
        mlflow.log_text(table + "\n", "comparison.md")
        if shared.skipped:
            mlflow.log_dict(shared.skipped, "skipped.json")
        if gains:
            unit = "requests" if "request_id" in data["test"].columns else "rows"
            interval = (f" [95% interval, paired bootstrap over test {unit}, seed {cfg.seed}]"
                        if cfg.bootstrap_samples else "")
            print(f"AUC gain over {cfg.baseline}: mean ± std over seeds{interval}\n{gains}\n", flush=True)
            mlflow.log_text(gains + "\n", "gains.md")
        mlflow.log_dict({name: {c: v.get(c) for c in columns + [f"{c}_std" for c in columns] if c in v}
                         for name, v in rows.items()}, "comparison.json")
        _show_comparison_on_parent(results, table, gains, cfg.baseline)
        if cfg.plots:
            y = data["test"].labels
            curves = {name: (y, r.test_scores) for name, r in results.items()}
            if shared.oracle is not None:
                curves["(oracle)"] = (y, shared.oracle)
            mlflow.log_figure(roc_figure(curves, f"{cfg.name}: ROC on test"), "roc_test.png")
            if gains:
                mlflow.log_figure(gains_figure(gain_rows, cfg.baseline, gain_slices,
                                               f"{cfg.name}: test AUC gain over {cfg.baseline} (95% interval)"),
                                  "gains_test.png")
            close_figures()
        export_path = _export(cfg, shared, results[cfg.export_model], parent.info.run_id) if cfg.export_model else None
        print(f"MLflow: parent run {parent.info.run_id} in experiment '{cfg.experiment}' at {tracking_uri()}; "
              f"`mlflow ui --backend-store-uri {tracking_uri()}`, then open "
              f"http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}?workflowType=machine_learning")
    return ExperimentResult(parent.info.run_id, results, table, export_path, gains)


def _show_comparison_on_parent(results: dict[str, ModelResult], table: str, gains: str, baseline: str) -> None:
    """What the runs table shows without a click: the parent row carries each model's test AUC (and its gain over
    the baseline) as `<model>/test/auc`, and its description is the comparison table."""
    headline = {}
    for name, result in results.items():
        for key in ("test/auc", f"test/auc_gain_vs_{baseline}"):
            if key in result.metrics:
                headline[f"{name}/{key}"] = result.metrics[key]
    mlflow.log_metrics(headline)
    mlflow.set_tag("mlflow.note.content", table + ("\n\n" + gains if gains else "") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ranking.train", description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--seeds", type=int, default=None, metavar="N",
                        help="train every model with N seeds and report mean and spread (overrides `seeds`)")
    args = parser.parse_args(argv)
    overrides = list(args.overrides) + ([f"seeds={args.seeds}"] if args.seeds is not None else [])
    cfg = load_config(RankingConfig, args.config, overrides)
    _sigterm_raises()
    run_experiment(cfg)
    return 0


def _sigterm_raises() -> None:
    """Turn SIGTERM into SystemExit so the MLflow runs close as FAILED instead of staying RUNNING."""
    if threading.current_thread() is threading.main_thread():
        def handler(signum, frame):
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    exit_on(main, ConfigError, TrainingSetError)
