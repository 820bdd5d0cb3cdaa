"""Fitting one neural pCTR model: Keras `fit` with exact validation AUC per epoch, early stopping, learning-rate
decay on plateau, atomic resumable checkpoints, then Platt calibration on the validation split.

    compile_model(model, cfg)                 Adam on dense layers + a row-sparse optimizer on the id table
    fit_model(model, data, cfg, seed, ckpt)   -> FitResult; resumes from ckpt/state when its fingerprint matches
    predict(model, split, spec)               -> P(click) as float64 numpy
    restore_final(model, ckpt)                the trained, calibrated weights of a finished run
    local_copy(model)                         a model trained under a strategy, rebuilt outside it

Under tf.distribute (train.strategy, ranking/distribute.py) the caller builds and compiles the model inside
`strategy.scope()`; fit_model then feeds each worker its share of every global batch, makes the workers agree on
the validation AUC (so they stop and decay the learning rate together) and lets only the chief write checkpoints:
the others write theirs to a temporary folder that is deleted at once (saving a distributed model's metric
variables is a collective every worker must join). Every worker resumes from the chief's checkpoint_dir, which
must therefore be on a filesystem they all read.

Checkpoints (`<checkpoint_dir>/state/` after every epoch, `best/` at every improvement, `final/` once trained and
calibrated) are written to a temporary folder and renamed into place, so a killed run leaves the previous complete
checkpoint. The data order of epoch k derives from (seed, k), and the id-dropout and dropout draws from (seed,
step), so a resumed run trains on the same batches with the same draws as an uninterrupted one and ends with its
weights bit for bit. The state also holds the epochs' history rows (FitResult.restored_history after a resume).
fit_model does not lock checkpoint_dir: ranking.train holds a lock on the experiment's checkpoint folder.
No MLflow here: the caller passes `on_epoch` and logs what it receives.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from core import metrics
from core.files import current_or_previous, previous_version, staged_folder
from ranking import distribute
from ranking.calibration import fit_calibration, logit, sigmoid
from ranking.config import TrainConfig
from ranking.models import PCTRModel, build_model
from ranking.pipeline import make_dataset, split_columns
from ranking.sparse_optim import RowSparseOptimizer
from ranking.tf_legacy_keras import tf
from ranking.training_set import FeatureSpec, Split, TrainingSet


@dataclass
class FitResult:
    best_epoch: int = -1
    best_valid_auc: float = float("nan")
    epochs_run: int = 0  # epochs trained in this call (0: restored a finished run)
    resumed_from: int = 0
    seconds: float = 0.0
    train_examples_per_s: float = float("nan")
    history: list[dict] = field(default_factory=list)  # the epochs trained in this call
    restored_history: list[dict] = field(default_factory=list)  # those of the earlier sessions a resume continues
    calibration: tuple[float, float] = (1.0, 0.0)  # (a, b) of sigmoid(a * logit + b), fitted on valid


def compile_model(model: PCTRModel, cfg: TrainConfig) -> None:
    """Adam (Keras) on the dense weights; the id table gets a row-sparse optimizer unless keras_adam is chosen."""
    # steps_per_execution: one Python round trip per that many steps (the step itself is unchanged).
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.learning_rate, jit_compile=False),
                  steps_per_execution=cfg.steps_per_execution)
    model.replica_batch_rows = -(-cfg.batch_size // model.distribute_strategy.num_replicas_in_sync)
    if cfg.table_optimizer != "keras_adam":
        model.table_optimizer = RowSparseOptimizer(cfg.table_optimizer, model.id_embedding.table,
                                                   cfg.table_learning_rate)
    # Build the Adam slots now (not at the first step) so a checkpoint restores into them directly.
    table = model.id_embedding.table
    sparse = model.table_optimizer is not None
    model.optimizer.build([v for v in model.trainable_variables if not (sparse and v is table)])


def predict(model: PCTRModel, split: Split, spec: FeatureSpec, batch_size: int = 16384) -> np.ndarray:
    """P(click) for every row of `split`, in row order, float64."""
    logits = model.predict_logits(make_dataset(split, spec, batch_size, labels=False))
    return sigmoid(np.asarray(logits, dtype=np.float64).reshape(-1))


# ---------------------------------------------------------------------------------------------- checkpoints


def _complete(folder: Path) -> Path | None:
    """The folder, or its previous version if a crash hit between the two renames; None if neither is complete."""
    return current_or_previous(folder, lambda candidate: (candidate / "state.json").exists())


def _checkpoint(model: PCTRModel) -> tf.train.Checkpoint:
    parts = {"model": model, "optimizer": model.optimizer}
    if model.table_optimizer is not None:
        parts["table_optimizer"] = model.table_optimizer
    return tf.train.Checkpoint(**parts)


def _save(folder: Path, model: PCTRModel, state: dict) -> None:
    """Swap a complete checkpoint into `folder`; the previous one waits under the fixed `.old` name during the swap
    so that _complete finds it after a crash between the two renames. A worker other than the chief writes to a
    temporary folder and deletes it (it must join the save's collectives, but the checkpoint is the chief's)."""
    if not distribute.is_chief(model.distribute_strategy):
        with tempfile.TemporaryDirectory(prefix="ranking-worker-ckpt-") as tmp:
            _checkpoint(model).write(str(Path(tmp) / "ckpt"))
        return
    with staged_folder(folder, old=previous_version(folder)) as tmp:
        _checkpoint(model).write(str(tmp / "ckpt"))
        (tmp / "state.json").write_text(json.dumps(state, indent=1))


def _restore(folder: Path, model: PCTRModel) -> dict:
    _checkpoint(model).read(str(folder / "ckpt")).assert_existing_objects_matched()
    return json.loads((folder / "state.json").read_text())


def fingerprint(model: PCTRModel, cfg: TrainConfig, data: TrainingSet, seed: int) -> str:
    """What must match for a checkpoint to be resumed: model, optimisation (except epochs), data, seed. Not the
    strategy: every strategy trains on the same global batches, so a run may resume under another one."""
    skip = ("epochs", "resume", "eval_batch_size", "calibration", "steps_per_execution", "strategy")
    train_cfg = {k: v for k, v in asdict(cfg).items() if k not in skip}
    payload = {"kind": model.kind, "net": asdict(model.net), "train": train_cfg, "spec": data.spec.to_dict(),
               "rows": {k: len(v) for k, v in data.splits.items()}, "path": str(data.path), "seed": seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- fit


def _set_learning_rates(model: PCTRModel, dense_lr: float, table_lr: float) -> None:
    model.optimizer.learning_rate.assign(dense_lr)
    if model.table_optimizer is not None:
        model.table_optimizer.learning_rate.assign(table_lr)


class _EpochEnd(tf.keras.callbacks.Callback):
    """Exact validation AUC (numpy), early stopping, LR decay on plateau, checkpoints, the caller's logging."""

    def __init__(self, data: TrainingSet, cfg: TrainConfig, state: dict, ckpt: Path | None,
                 on_epoch: Callable[[int, dict], None] | None, result: FitResult):
        super().__init__()
        self.data, self.cfg, self.state, self.ckpt = data, cfg, state, ckpt
        self.on_epoch, self.result = on_epoch, result
        self.started = time.perf_counter()
        self.best_weights = None

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        valid = self.data["valid"]
        p = predict(self.model, valid, self.data.spec, self.cfg.eval_batch_size)
        y = valid.labels
        # every worker must take the same decisions below: one worker's AUC for all
        valid_auc = distribute.agree(self.model.distribute_strategy, metrics.auc(y, p))
        valid_logloss = metrics.logloss(y, p)
        s = self.state
        if valid_auc > s["best_valid_auc"] + self.cfg.min_delta:
            s.update(best_valid_auc=valid_auc, best_epoch=epoch, wait=0, plateau_wait=0)
            self.best_weights = self.model.get_weights()
            if self.ckpt is not None:
                _save(self.ckpt / "best", self.model, {"epoch": epoch, "valid_auc": valid_auc})
        else:
            s["wait"] += 1
            s["plateau_wait"] += 1
            if s["plateau_wait"] >= self.cfg.lr_decay_patience:
                s["learning_rate"] = max(s["learning_rate"] * self.cfg.lr_decay_factor, self.cfg.min_learning_rate)
                s["table_learning_rate"] = max(s["table_learning_rate"] * self.cfg.lr_decay_factor,
                                               self.cfg.min_learning_rate)
                s["plateau_wait"] = 0
            if s["wait"] >= self.cfg.early_stopping_patience:
                s["stopped"] = True
                self.model.stop_training = True
        lr_used = float(self.model.optimizer.learning_rate.numpy())
        _set_learning_rates(self.model, s["learning_rate"], s["table_learning_rate"])
        s["epoch"] = epoch + 1
        n_train = len(self.data["train"])
        row = {"epoch/train_loss": float(logs.get("loss", float("nan"))), "epoch/valid_auc": valid_auc,
               "epoch/valid_logloss": valid_logloss, "epoch/learning_rate": lr_used, "epoch/seconds": seconds,
               "epoch/train_examples_per_s": n_train / seconds}
        self.result.history.append({"epoch": epoch, **row})
        self.result.epochs_run += 1
        s.setdefault("history", []).append({"epoch": epoch, **row})  # what a resumed run reports as restored_history
        if self.ckpt is not None:
            _save(self.ckpt / "state", self.model, s)
        if self.on_epoch is not None:
            self.on_epoch(epoch, row)


def fit_model(model: PCTRModel, data: TrainingSet, cfg: TrainConfig, seed: int = 0,
              checkpoint_dir: str | Path | None = None,
              on_epoch: Callable[[int, dict], None] | None = None) -> FitResult:
    """Train `model` (built, compiled) on data["train"], early-stopping on data["valid"]; ends with the best weights.

    With checkpoint_dir and cfg.resume, a previous run with the same fingerprint continues where it stopped
    (a finished one is just restored, whatever strategy wrote it); a checkpoint with another fingerprint is
    replaced. Under a strategy, `model` was built in its scope and this worker trains on its share of each batch.
    """
    strategy = model.distribute_strategy
    chief = distribute.is_chief(strategy)
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    key = fingerprint(model, cfg, data, seed)
    state = {"fingerprint": key, "epoch": 0, "best_valid_auc": -1.0, "best_epoch": -1, "wait": 0,
             "plateau_wait": 0, "learning_rate": cfg.learning_rate, "table_learning_rate": cfg.table_learning_rate,
             "stopped": False}
    result = FitResult()
    if ckpt is not None:
        found = _complete(ckpt / "state") if cfg.resume else None
        if found is not None and json.loads((found / "state.json").read_text()).get("fingerprint") == key:
            state = _restore(found, model)
            result.resumed_from = state["epoch"]
            result.restored_history = list(state.get("history", []))
            _set_learning_rates(model, state["learning_rate"], state["table_learning_rate"])
        elif ckpt.exists() and chief:
            shutil.rmtree(ckpt)
        if distribute.agree(strategy, state["epoch"]) != state["epoch"]:
            raise RuntimeError(f"worker {distribute.worker(strategy)[0]} found a checkpoint after epoch "
                               f"{state['epoch']} under {ckpt}, another worker a different one: every worker must "
                               f"read the chief's checkpoint_dir (a shared filesystem)")
    callback = _EpochEnd(data, cfg, state, ckpt, on_epoch, result)
    started = time.perf_counter()
    if state["epoch"] < cfg.epochs and not state["stopped"]:
        split_columns(data["valid"], data.spec)  # now, not inside fit's strategy scope (the callback reads it)
        def train(context):  # this worker's input pipeline: its replicas' shares of every global batch
            return make_dataset(data["train"], data.spec, cfg.batch_size, shuffle=True, seed=seed,
                                start_epoch=state["epoch"], replicas=distribute.input_replicas(context)).repeat()

        # One iterator over the repeated dataset for the whole fit (each pass draws the next epoch's permutation).
        model.fit(strategy.distribute_datasets_from_function(train), epochs=cfg.epochs, initial_epoch=state["epoch"],
                  steps_per_epoch=-(-len(data["train"]) // cfg.batch_size), callbacks=[callback], verbose=0)
    result.seconds = time.perf_counter() - started
    if result.epochs_run:
        result.train_examples_per_s = len(data["train"]) * result.epochs_run / result.seconds
    # End with the best epoch's weights: from memory, else from the best checkpoint of an earlier session.
    if callback.best_weights is not None:
        model.set_weights(callback.best_weights)
    elif ckpt is not None and _complete(ckpt / "best") is not None:
        _checkpoint(model).read(str(_complete(ckpt / "best") / "ckpt")).expect_partial()
    result.best_epoch, result.best_valid_auc = state["best_epoch"], state["best_valid_auc"]
    model.calibration.assign([1.0, 0.0])
    if cfg.calibration != "none":
        p = predict(model, data["valid"], data.spec, cfg.eval_batch_size)
        a, b = fit_calibration(logit(p), data["valid"].labels, cfg.calibration)
        model.calibration.assign([a, b])
        result.calibration = (a, b)
    if ckpt is not None:  # the model as trained and calibrated: what restore_final() loads
        _save(ckpt / "final", model, {"best_epoch": result.best_epoch, "calibration": list(result.calibration)})
    return result


def local_copy(model: PCTRModel) -> PCTRModel:
    """The model rebuilt outside any strategy with the trained (and calibrated) weights: what the chief evaluates
    and exports alone, without the collectives a distributed model's variables would start. Call it outside
    `strategy.scope()`."""
    clean = build_model(model.kind, model.spec, model.prep, model.net)
    # What inference reads: the trainable weights (same layers, same order) and the calibration.
    for target, source in zip(clean.trainable_variables, model.trainable_variables, strict=True):
        target.assign(source.read_value())
    clean.calibration.assign(model.calibration.read_value())
    return clean


def restore_final(model: PCTRModel, checkpoint_dir: str | Path) -> dict:
    """Load the weights (and calibration) a finished fit_model left in checkpoint_dir/final into a model built
    with the same kind, spec, preprocessing and NetConfig; returns the state saved with them."""
    found = _complete(Path(checkpoint_dir) / "final")
    if found is None:
        raise FileNotFoundError(f"no finished model under {checkpoint_dir}/final")
    tf.train.Checkpoint(model=model).read(str(found / "ckpt")).expect_partial()
    return json.loads((found / "state.json").read_text())
