"""Baseline rankers, compared with the neural models on the same split and the same metrics.

    base_rate            the train CTR for everyone (AUC 0.5: the floor)
    historical_ctr       smoothed train CTRs: ad backed off to product backed off to the base rate, times the
                         query's and the position's CTR ratio (a count-based production ranker)
    logistic_regression  scikit-learn on hashed ids (and id crosses) plus the standardised dense features
    gbdt                 LightGBM on the dense features and low-cardinality ids as categories

Each is `fit(data, seed)` then `predict(split)` -> P(click) as float64. No TensorFlow here.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import sparse

from ranking.config import BaselineConfig
from ranking.training_set import FeatureSpec, Split, TrainingSet, dense_features


_DEFAULTS = BaselineConfig()


def ctr_columns(cfg: BaselineConfig, present) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """historical_ctr's (hierarchy, factors): as configured, or, left at their defaults (simulator columns), only
    the default columns the inputs have."""
    hierarchy, factors = cfg.ctr_hierarchy, cfg.ctr_factors
    if hierarchy == _DEFAULTS.ctr_hierarchy:
        hierarchy = tuple(c for c in hierarchy if c in present)
    if factors == _DEFAULTS.ctr_factors:
        factors = tuple(c for c in factors if c in present)
    return hierarchy, factors


def lr_crosses(cfg: BaselineConfig, present) -> tuple[tuple[str, str], ...]:
    """The id crosses of logistic_regression: as configured, or, left at the default (simulator columns such as
    aisle), only the default crosses whose two columns the inputs have."""
    if cfg.lr_crosses == _DEFAULTS.lr_crosses:
        return tuple((a, b) for a, b in cfg.lr_crosses if a in present and b in present)
    return cfg.lr_crosses


def gbdt_categorical(cfg: BaselineConfig, spec: FeatureSpec) -> tuple[str, ...]:
    """GBDT's categorical columns: as configured (each must be a model input), or, left at the default (simulator
    columns), those default columns among the id inputs, and every id input when none of them is."""
    if cfg.gbdt_categorical != _DEFAULTS.gbdt_categorical:
        return cfg.gbdt_categorical
    found = tuple(c for c in cfg.gbdt_categorical if c in spec.ids)
    return found or spec.ids


def required_columns(name: str, cfg: BaselineConfig, present=None) -> tuple[str, ...]:
    """Columns a baseline reads beyond the model inputs (checked before any training starts). `present`: the
    columns the training set has, against which the simulator-column defaults are filtered."""
    present = tuple(present) if present is not None else None
    if name == "historical_ctr":
        if present is None:
            return cfg.ctr_hierarchy + cfg.ctr_factors
        hierarchy, factors = ctr_columns(cfg, present)
        return hierarchy + factors
    if name == "logistic_regression":
        crosses = cfg.lr_crosses if present is None else lr_crosses(cfg, present)
        return tuple(c for pair in crosses for c in pair)
    if name == "gbdt" and cfg.gbdt_categorical != _DEFAULTS.gbdt_categorical:
        return cfg.gbdt_categorical
    return ()


def make_baseline(name: str, cfg: BaselineConfig):
    return {"base_rate": BaseRate, "historical_ctr": HistoricalCTR, "logistic_regression": HashedLogisticRegression,
            "gbdt": GBDT}[name](cfg)


def _need(columns: tuple[str, ...], split: Split, who: str) -> None:
    missing = [c for c in columns if c not in split.columns]
    if missing:
        raise ValueError(f"{who}: the config names column(s) the model inputs do not include: {', '.join(missing)} "
                         f"(add them to features.id_features)")


def _n_dense(spec: FeatureSpec) -> int:
    """Columns of dense_features: the dense features, then one CTR logit per count pair."""
    return len(spec.dense) + len(spec.ctr_pairs)


def _some_features(n: int, who: str) -> None:
    if n == 0:
        raise ValueError(f"{who}: no features to fit on (no id, dense or count feature in the model inputs, and "
                         f"none of its own); add some to features.id_features or features.dense_features")


class BaseRate:
    def __init__(self, cfg: BaselineConfig):
        self.rate = 0.0

    def fit(self, data: TrainingSet, seed: int = 0) -> "BaseRate":
        self.rate = float(data["train"].labels.mean())
        return self

    def predict(self, split: Split) -> np.ndarray:
        return np.full(len(split), self.rate)


class _CTRTable:
    """Clicks and impressions per value of one column; smoothed CTR toward a per-row prior."""

    def __init__(self, values: np.ndarray, clicks: np.ndarray):
        self.keys, inverse = np.unique(values, return_inverse=True)
        self.imps = np.bincount(inverse, minlength=len(self.keys)).astype(np.float64)
        self.clicks = np.bincount(inverse, weights=clicks, minlength=len(self.keys))

    def counts(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(self.keys) == 0:
            return np.zeros(len(values)), np.zeros(len(values))
        pos = np.clip(np.searchsorted(self.keys, values), 0, len(self.keys) - 1)
        hit = self.keys[pos] == values
        return np.where(hit, self.clicks[pos], 0.0), np.where(hit, self.imps[pos], 0.0)


class HistoricalCTR:
    def __init__(self, cfg: BaselineConfig):
        self.cfg = cfg

    def fit(self, data: TrainingSet, seed: int = 0) -> "HistoricalCTR":
        train = data["train"]
        self.hierarchy, self.factors = ctr_columns(self.cfg, train.columns)
        _need(self.hierarchy + self.factors, train, "historical_ctr")
        if not self.hierarchy + self.factors:
            raise ValueError("historical_ctr: none of its columns (baselines.ctr_hierarchy, baselines.ctr_factors; "
                             f"defaults {', '.join(_DEFAULTS.ctr_hierarchy + _DEFAULTS.ctr_factors)}) is in the "
                             "training set: name some of its id columns there, or leave historical_ctr out")
        y = train.labels.astype(np.float64)
        self.base = float(y.mean())
        self.tables = {c: _CTRTable(train.columns[c], y) for c in self.hierarchy + self.factors}
        return self

    def predict(self, split: Split) -> np.ndarray:
        m = self.cfg.prior_strength
        # Coarsest level first: its smoothed CTR is the prior of the next finer one.
        ctr = np.full(len(split), self.base)
        for c in reversed(self.hierarchy):
            clicks, imps = self.tables[c].counts(split.columns[c])
            ctr = (clicks + m * ctr) / (imps + m)
        for c in self.factors:
            clicks, imps = self.tables[c].counts(split.columns[c])
            ctr = ctr * ((clicks + m * self.base) / (imps + m)) / self.base
        return np.clip(ctr, 1e-6, 1 - 1e-6)


def _hash(values: np.ndarray) -> np.ndarray:
    return pd.util.hash_array(np.asarray(values), categorize=True)  # uint64, stable across runs


class HashedLogisticRegression:
    """P(click) = sigmoid(w . x): x = one-hot hashed ids and id crosses (2^bits columns) + standardised dense.

    Each dense column is standardised on train and divided by sqrt(D), so a row's D dense values weigh about as
    much as one of its hashed ids. saga's step size follows the largest squared row norm: with unit-variance dense
    columns that norm was dominated by a few outlying rows, and saga needed about 150 epochs to converge instead
    of about 50 (the solution is the same: L2 at C=1 hardly binds on thousands of rows).
    """

    def __init__(self, cfg: BaselineConfig):
        self.cfg = cfg

    def _design(self, split: Split):
        n, buckets = len(split), np.uint64(1 << self.cfg.lr_hash_bits)
        cols = []
        for i, name in enumerate(self.spec.ids):
            salt = np.uint64((0x9E3779B97F4A7C15 * (i + 1)) % (1 << 64))
            cols.append((_hash(split.columns[name]) ^ salt) % buckets)
        for j, (a, b) in enumerate(self.crosses):
            salt = np.uint64((0xC2B2AE3D27D4EB4F * (j + 1)) % (1 << 64))
            with np.errstate(over="ignore"):
                h = _hash(split.columns[a]) * np.uint64(1000003) ^ _hash(split.columns[b])
            cols.append((h ^ salt) % buckets)
        hashed = np.stack(cols, axis=1).astype(np.int64) if cols else np.zeros((n, 0), np.int64)  # [n, K]
        dense = (dense_features(split.columns, self.spec, self.base, self.prior) - self.mean) / self.scale  # [n, D]
        k, d = hashed.shape[1], dense.shape[1]
        indices = np.concatenate([hashed, int(buckets) + np.broadcast_to(np.arange(d), (n, d))], axis=1)
        values = np.concatenate([np.ones((n, k)), dense], axis=1)
        indptr = np.arange(0, n * (k + d) + 1, k + d)
        return sparse.csr_matrix((values.ravel(), indices.ravel(), indptr), shape=(n, int(buckets) + d))

    def fit(self, data: TrainingSet, seed: int = 0) -> "HashedLogisticRegression":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression  # scikit-learn only in runs that fit this baseline

        train = data["train"]
        self.spec: FeatureSpec = data.spec
        self.crosses = lr_crosses(self.cfg, train.columns)
        for a, b in self.crosses:
            _need((a, b), train, "logistic_regression cross")
        _some_features(len(self.spec.ids) + len(self.crosses) + _n_dense(self.spec), "logistic_regression")
        self.base, self.prior = float(train.labels.mean()), 20.0
        x = dense_features(train.columns, self.spec, self.base, self.prior)
        std = np.where(x.std(axis=0) > 1e-6, x.std(axis=0), 1.0)
        self.mean, self.scale = x.mean(axis=0), std * np.sqrt(max(x.shape[1], 1))
        design = self._design(train)
        grid = self.cfg.lr_c_grid or (self.cfg.lr_c,)
        self.valid_logloss: dict[float, float] = {}
        best = None
        valid = data["valid"]
        valid_design = self._design(valid) if len(grid) > 1 else None
        for c in grid:
            model = LogisticRegression(C=c, solver="saga", tol=1e-3, max_iter=self.cfg.lr_max_iter,
                                       random_state=seed)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                model.fit(design, train.labels)
            if any(issubclass(w.category, ConvergenceWarning) for w in caught):
                warnings.warn(f"logistic_regression C={c}: saga stopped at max_iter={self.cfg.lr_max_iter} before "
                              f"its tolerance: the fit is not converged; raise baselines.lr_max_iter, or lower C "
                              f"(stronger L2 converges sooner)", ConvergenceWarning, stacklevel=2)
            if valid_design is None:
                best = (0.0, c, model)
                break
            from core.metrics import logloss

            loss = logloss(valid.labels, np.clip(model.predict_proba(valid_design)[:, 1], 1e-7, 1 - 1e-7))
            self.valid_logloss[c] = float(loss)
            if best is None or loss < best[0]:
                best = (loss, c, model)
        _, self.c, self.model = best
        self.converged = int(self.model.n_iter_[0]) < self.cfg.lr_max_iter
        if len(grid) > 1:
            print(f"[logistic_regression] C chosen on valid: {self.c} (valid logloss " +
                  ", ".join(f"C={c}: {v:.4f}" for c, v in self.valid_logloss.items()) + ")", flush=True)
        return self

    def predict(self, split: Split) -> np.ndarray:
        return self.model.predict_proba(self._design(split))[:, 1].astype(np.float64)


class GBDT:
    """LightGBM: dense features (with CTR logits) + low-cardinality ids as categorical codes (train vocabulary)."""

    def __init__(self, cfg: BaselineConfig):
        self.cfg = cfg

    def _matrix(self, split: Split) -> np.ndarray:
        dense = dense_features(split.columns, self.spec, self.base, 20.0)
        cats = []
        for name in self.categorical:
            keys = self.vocab[name]
            v = split.columns[name]
            pos = np.clip(np.searchsorted(keys, v), 0, len(keys) - 1)
            cats.append(np.where(keys[pos] == v, pos, -1).astype(np.float64))  # unseen -> missing
        return np.concatenate([dense] + [c[:, None] for c in cats], axis=1) if cats else dense

    def fit(self, data: TrainingSet, seed: int = 0) -> "GBDT":
        import lightgbm as lgb  # LightGBM only in runs that fit this baseline

        train, valid = data["train"], data["valid"]
        self.spec: FeatureSpec = data.spec
        self.base = float(train.labels.mean())
        self.categorical = list(gbdt_categorical(self.cfg, self.spec))
        _need(tuple(self.categorical), train, "gbdt categorical")
        self.vocab = {c: np.unique(train.columns[c]) for c in self.categorical}
        n_dense = _n_dense(self.spec)
        _some_features(n_dense + len(self.categorical), "gbdt")
        params = {"objective": "binary", "learning_rate": self.cfg.gbdt_learning_rate,
                  "num_leaves": self.cfg.gbdt_leaves, "min_data_in_leaf": self.cfg.gbdt_min_data_in_leaf,
                  "feature_fraction": 0.9, "bagging_fraction": 0.9, "bagging_freq": 1, "seed": seed,
                  "num_threads": self.cfg.threads, "verbose": -1}
        cat_idx = list(range(n_dense, n_dense + len(self.categorical)))
        dtrain = lgb.Dataset(self._matrix(train), train.labels, categorical_feature=cat_idx, free_raw_data=True)
        dvalid = lgb.Dataset(self._matrix(valid), valid.labels, reference=dtrain, categorical_feature=cat_idx)
        self.model = lgb.train(params, dtrain, num_boost_round=self.cfg.gbdt_rounds, valid_sets=[dvalid],
                               callbacks=[lgb.early_stopping(self.cfg.gbdt_early_stopping, verbose=False)])
        if not any(tree.get("tree_structure", {}).get("split_index") is not None or
                   "left_child" in tree.get("tree_structure", {})
                   for tree in self.model.dump_model(num_iteration=self.model.best_iteration).get("tree_info", [])):
            raise ValueError(f"gbdt: LightGBM found no split on its {n_dense} dense and {len(self.categorical)} "
                             f"categorical feature(s) ({', '.join(self.categorical) or 'none'}): every feature is "
                             f"constant or too rare (gbdt_min_data_in_leaf {self.cfg.gbdt_min_data_in_leaf}); its "
                             f"scores would be a constant (AUC 0.5)")
        return self

    def predict(self, split: Split) -> np.ndarray:
        return self.model.predict(self._matrix(split), num_iteration=self.model.best_iteration).astype(np.float64)
