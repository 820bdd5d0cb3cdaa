"""Turn a user's click log into a training set: `python -m ranking.prepare`.

    python -m ranking.prepare input=train.txt format=criteo out=data/criteo/training_sets/criteo [key=value ...]
    python -m ranking.train --config data/criteo/training_sets/criteo/ranking.yaml

Reads the log (ranking.loaders: criteo, avazu, libfm + featindex, csv, parquet), checks it against the click-log
contract (feature_store.schema.tables.CLICK_LOG: a 0/1 label of any integer/float dtype, any feature columns,
optional request/user/query/product ids, position, impression_id, ts), splits it by time or by ratio (or as fold
k of a k-fold split), fits the preprocessing on train only and writes the folder layout the feature store writes:

    <out>/{train,valid,test}/part-00000.parquet     click (int8), ids and features
    <out>/metadata.json                             rows, splits, vocabularies' sizes, the prepare config,
                                                    `"world": null` (no ground truth: no oracle is ever joined)
    <out>/ranking.yaml                              a RankingConfig for these columns (python -m ranking.train)

Preprocessing, fitted on train:
    categorical  one int64 code per value seen at least `min_count` times in train (1 = most frequent, ...);
                 rarer, unseen and missing values share code 0. `hash_buckets` > 0 hashes values into
                 1..hash_buckets instead (no vocabulary).
    numeric      kept as a dense float32 feature (missing = NaN: ranking imputes the train mean; signed log1p),
                 and (`numeric_buckets`) an integer bucket `<name>_bucket` encoded like a categorical:
                 floor(log(x)^2) for x > 2 and x itself otherwise (the Criteo winners' transform), `missing`
                 for an empty value.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from core.config import ConfigError, add_config_args, check_folder_name, config_to_dict, exit_on, load_config
from core.files import staged_folder
from feature_store.schema.tables import CLICK_LOG, TIMESTAMP
from feature_store.schema.validation import SchemaError, validate_against
from ranking.loaders import (KEY_COLUMNS, LABEL, ClickLog, LoaderError, load_avazu, load_criteo, load_libfm,
                             load_table)

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class PrepareConfig:
    """`python -m ranking.prepare`: which log, how to split it and how to encode its features."""

    input: str = ""  # a file or a folder of files
    format: Literal["auto", "criteo", "avazu", "libfm", "csv", "parquet"] = "auto"  # auto: by the file suffix
    featindex: str = ""  # libfm: the featindex file (field:value<TAB>index)
    out: str = ""  # the training-set folder to write (replaced if it exists)
    name: str = ""  # the training set's name (its embedding_version field); "" = the out folder's name
    label: str = "click"  # csv / parquet: the label column (any integer, float or boolean 0/1 dtype)
    categorical: tuple[str, ...] = ()  # csv / parquet: categorical columns ("" with numeric () = inferred)
    numeric: tuple[str, ...] = ()  # csv / parquet: numeric columns
    max_rows: int = 0  # > 0: only the first rows of the log
    split: Literal["ratio", "time"] = "ratio"
    time_column: str = ""  # time split: the column to sort on ("" = the format's: ts for Avazu)
    valid_ratio: float = 0.1
    test_ratio: float = 0.1
    shuffle: bool = True  # ratio split: rows in a seeded random order (false: file order)
    folds: int = 0  # > 1: test = fold `fold` of a seeded k-fold split; valid = valid_ratio of the rest
    fold: int = 0
    seed: int = 0
    min_count: int = 2  # categorical values seen fewer times in train share code 0
    hash_buckets: int = 0  # > 0: hash categorical values into this many buckets instead of a vocabulary
    numeric_dense: bool = True  # numeric columns as dense features
    numeric_buckets: bool = True  # and as bucketed categorical features <name>_bucket
    bucketing: Literal["log_square", "none"] = "log_square"  # none: the integer value itself is the bucket

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("input: name the click log (a file or a folder)")
        if not self.out:
            raise ConfigError("out: name the training-set folder to write")
        if self.format == "libfm" and not self.featindex:
            raise ConfigError("featindex: the libfm format needs the featindex file")
        if not (0 <= self.valid_ratio < 1 and 0 <= self.test_ratio < 1 and self.valid_ratio + self.test_ratio < 1):
            raise ConfigError("valid_ratio and test_ratio must lie in [0, 1) and leave rows for train")
        if self.folds == 1 or self.folds < 0 or (self.folds and not 0 <= self.fold < self.folds):
            raise ConfigError("folds must be 0 or >= 2, and fold in [0, folds)")
        if self.min_count < 1 or self.hash_buckets < 0:
            raise ConfigError("min_count must be >= 1 and hash_buckets >= 0")
        if self.max_rows < 0 or self.seed < 0:
            raise ConfigError(f"max_rows and seed must be >= 0, got max_rows={self.max_rows}, seed={self.seed}")
        if self.name:  # ranking.train files its checkpoints under <name>/
            check_folder_name("PrepareConfig", "name", self.name)
        if not (self.numeric_dense or self.numeric_buckets):
            raise ConfigError("numeric_dense and numeric_buckets: keep at least one")


# ---------------------------------------------------------------------------------------------- reading


def read_log(cfg: PrepareConfig) -> ClickLog:
    """The log through its loader; a file the parsers cannot read (truncated parquet, not UTF-8, a broken CSV)
    is a LoaderError naming the input."""
    try:
        return _read_log(cfg)
    except (ConfigError, LoaderError):
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise LoaderError(f"{cfg.input}: cannot read the click log ({type(err).__name__}: {err})") from None


def _read_log(cfg: PrepareConfig) -> ClickLog:
    fmt = cfg.format
    if fmt == "auto":
        first = Path(cfg.input)
        suffix = (sorted(first.iterdir())[0] if first.is_dir() else first).suffix
        fmt = {".parquet": "parquet", ".csv": "csv"}.get(suffix, "")
        if not fmt:
            raise ConfigError(f"format: cannot tell the format of {cfg.input} from its suffix; set format=criteo, "
                              f"avazu, libfm, csv or parquet")
    if fmt == "criteo":
        return load_criteo(cfg.input, cfg.max_rows)
    if fmt == "avazu":
        return load_avazu(cfg.input, cfg.max_rows)
    if fmt == "libfm":
        return load_libfm(cfg.input, cfg.featindex, cfg.max_rows)
    return load_table(cfg.input, cfg.label, cfg.categorical, cfg.numeric, fmt, cfg.max_rows, cfg.time_column)


# ---------------------------------------------------------------------------------------------- splitting


def split_rows(log: ClickLog, cfg: PrepareConfig) -> dict[str, np.ndarray]:
    """Row indices of train / valid / test: by time (the last test_ratio of the time order is test, the
    valid_ratio before it valid), by ratio (seeded random order unless shuffle=false) or as one fold of k."""
    n = len(log.frame)
    rng = np.random.default_rng(cfg.seed)
    if cfg.split == "time":
        column = cfg.time_column or log.time_column
        if not column or column not in log.frame.columns:
            raise ConfigError(f"split=time: the log has no time column{' ' + repr(column) if column else ''}; set "
                              f"time_column, or split=ratio")
        order = np.argsort(log.frame[column].to_numpy(), kind="stable")
    else:
        order = rng.permutation(n) if cfg.shuffle or cfg.folds else np.arange(n)
    if cfg.folds:
        bounds = np.linspace(0, n, cfg.folds + 1).astype(int)
        test = order[bounds[cfg.fold]:bounds[cfg.fold + 1]]
        rest = np.concatenate([order[:bounds[cfg.fold]], order[bounds[cfg.fold + 1]:]])
        n_valid = int(round(cfg.valid_ratio * len(rest)))
        out = {"train": rest[n_valid:], "valid": rest[:n_valid], "test": test}
    else:
        n_test, n_valid = int(round(cfg.test_ratio * n)), int(round(cfg.valid_ratio * n))
        out = {"train": order[:n - n_test - n_valid], "valid": order[n - n_test - n_valid:n - n_test],
               "test": order[n - n_test:]}
    for s, rows in out.items():
        if len(rows) == 0:
            raise ConfigError(f"split '{s}' would be empty ({n} rows); use more rows or other ratios")
    return {s: np.sort(rows) if cfg.split != "time" else rows for s, rows in out.items()}


# ---------------------------------------------------------------------------------------------- encoding


def log_square_bucket(values: np.ndarray) -> np.ndarray:
    """floor(log(x)^2) for x > 2, x itself otherwise (integers), as strings; NaN -> 'missing'."""
    out = np.full(len(values), "missing", dtype=object)
    ok = ~np.isnan(values)
    v = values[ok]
    big = v > 2
    b = np.where(big, np.floor(np.log(np.where(big, v, 3.0)) ** 2), np.floor(v))
    out[ok] = np.where(big, "b", "v").astype(object) + b.astype(np.int64).astype(str).astype(object)
    return out


def _strings(values: pd.Series) -> np.ndarray:
    """Categorical values as strings; missing -> '' (its own value)."""
    return values.astype(object).where(values.notna(), "").astype(str).to_numpy(dtype=object)


@dataclass
class Encoder:
    """A categorical column's train vocabulary (value -> code 1..V by frequency) or hashing."""

    vocab: dict[str, int]
    hash_buckets: int = 0

    @classmethod
    def fit(cls, train_values: np.ndarray, min_count: int, hash_buckets: int) -> "Encoder":
        if hash_buckets:
            return cls({}, hash_buckets)
        counts = pd.Series(train_values).value_counts(sort=True)
        kept = counts[counts >= min_count]
        return cls({v: i + 1 for i, v in enumerate(kept.index)})

    def transform(self, values: np.ndarray) -> np.ndarray:
        if self.hash_buckets:
            h = pd.util.hash_array(np.asarray(values, dtype=object), categorize=True)
            return (h % np.uint64(self.hash_buckets)).astype(np.int64) + 1
        return pd.Series(values).map(self.vocab).fillna(0).to_numpy(dtype=np.int64)


def _key_column(values: pd.Series) -> pa.Array:
    """An optional id of the contract as int64: integers unchanged, anything else hashed."""
    if pd.api.types.is_integer_dtype(values) and not values.isna().any():
        return pa.array(values.to_numpy(dtype=np.int64))
    h = pd.util.hash_array(values.astype(str).to_numpy(dtype=object), categorize=True)
    return pa.array((h >> np.uint64(1)).astype(np.int64))


def check_log(log: ClickLog) -> None:
    """What the loaders let through but a training set must not hold: an infinite numeric value (or one beyond
    float32), a repeated impression_id, a ts column that is not time-zone-aware or not a time."""
    frame = log.frame
    for c in log.numeric:
        v = frame[c].to_numpy(dtype=np.float64)
        bad = np.isinf(v) | (np.abs(np.nan_to_num(v)) > np.finfo(np.float32).max)
        if bad.any():
            raise LoaderError(f"{log.source}: numeric column '{c}' has {int(bad.sum())} infinite or float32-"
                              f"overflowing values (e.g. {float(v[bad][0])!r} in row {int(np.flatnonzero(bad)[0])})")
    if "impression_id" in frame.columns:
        ids = frame["impression_id"]
        repeated = ids.duplicated(keep=False)
        if repeated.any():
            raise LoaderError(f"{log.source}: column 'impression_id' has {int(ids.duplicated().sum())} repeated "
                              f"values (e.g. {_plain(ids[repeated].iloc[0])!r}): an impression id names one row")
    if "ts" in frame.columns:
        ts = frame["ts"]
        if pd.api.types.is_datetime64_dtype(ts) and not isinstance(ts.dtype, pd.DatetimeTZDtype):
            raise LoaderError(f"{log.source}: column 'ts' has naive timestamps ({ts.dtype}); give them a time "
                              f"zone (pandas: .dt.tz_localize('UTC'))")


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _timestamps(values: pd.Series, source: str) -> pa.Array:
    """ts as UTC instants: zone-aware times converted, text parsed (text without an offset is read as UTC).
    Numbers are refused: seconds, milliseconds or nanoseconds since 1970 cannot be told apart."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise LoaderError(f"{source}: column 'ts' holds numbers ({values.dtype}), not times: give ISO-8601 text "
                          f"(e.g. 2024-01-05T10:00:00Z) or timestamps")
    parsed = pd.to_datetime(values, utc=True, errors="coerce")
    bad = parsed.isna() & values.notna()
    if bad.any():
        raise LoaderError(f"{source}: column 'ts' has {int(bad.sum())} values that are not times in "
                          f"1677..2262 (e.g. {values[bad].iloc[0]!r})")
    return pa.array(parsed).cast(TIMESTAMP)


def encode(log: ClickLog, rows: dict[str, np.ndarray], cfg: PrepareConfig) -> tuple[dict[str, pa.Table], dict]:
    """The three split tables and what the preprocessing learned (for metadata.json)."""
    frame = log.frame
    train = rows["train"]
    columns: dict[str, np.ndarray] = {}  # full-length encoded columns
    id_features, dense_features, vocab_sizes = [], [], {}
    sources: dict[str, np.ndarray] = {c: _strings(frame[c]) for c in log.categorical}
    if cfg.numeric_buckets:
        for c in log.numeric:
            v = frame[c].to_numpy(dtype=np.float64)
            sources[f"{c}_bucket"] = log_square_bucket(v) if cfg.bucketing == "log_square" else np.where(
                np.isnan(v), "missing", np.floor(np.nan_to_num(v)).astype(np.int64).astype(str)).astype(object)
    for name, values in sources.items():
        enc = Encoder.fit(values[train], cfg.min_count, cfg.hash_buckets)
        columns[name] = enc.transform(values)
        vocab_sizes[name] = cfg.hash_buckets or len(enc.vocab)
        id_features.append(name)
    if cfg.numeric_dense:
        for c in log.numeric:
            columns[c] = frame[c].to_numpy(dtype=np.float64).astype(np.float32)
            dense_features.append(c)
    tables = {}
    for s, r in rows.items():
        arrays = {LABEL: pa.array(frame[LABEL].to_numpy()[r].astype(np.int8))}
        for k in KEY_COLUMNS:
            if k in frame.columns and k not in columns:
                arrays[k] = _key_column(frame[k].iloc[r])
        if "ts" in frame.columns and "ts" not in columns:
            arrays["ts"] = _timestamps(frame["ts"].iloc[r], log.source)
        for name in id_features:
            arrays[name] = pa.array(columns[name][r], pa.int64())
        for name in dense_features:
            arrays[name] = pa.array(columns[name][r], pa.float32(), from_pandas=True)
        table = pa.table(arrays)
        try:
            tables[s] = validate_against(CLICK_LOG, table, f"{cfg.input} ({s})", None, None)
        except SchemaError as err:
            raise LoaderError(str(err)) from None
    info = {"id_features": id_features, "dense_features": dense_features, "vocab_sizes": vocab_sizes,
            "keys": [k for k in KEY_COLUMNS if k in frame.columns]}
    return tables, info


# ---------------------------------------------------------------------------------------------- writing


def ranking_overrides(out: Path, name: str, info: dict, n_train: int) -> dict:
    """The RankingConfig for this training set: its columns, no embeddings, no simulator columns, a batch size
    that gives a small log some steps per epoch."""
    return {
        "name": name,
        "training_set": str(out),
        "models": ["base_rate", "logistic_regression", "gbdt", "dcn"],
        "export_model": None,
        "features": {"id_features": info["id_features"], "dense_features": info["dense_features"],
                     "log_features": list(info["dense_features"]), "count_features": "none",
                     "nan_policy": "impute"},
        "train": {"batch_size": int(min(4096, max(64, 2 ** round(math.log2(max(n_train, 1) / 50)))))},
        "gain_slices": [],
        "baselines": {"lr_c_grid": [0.01, 0.03, 0.1, 0.3, 1.0]},
    }


def prepare(cfg: PrepareConfig) -> dict:
    """Read, split, encode and write; returns the metadata written."""
    log = read_log(cfg)
    check_log(log)
    rows = split_rows(log, cfg)
    tables, info = encode(log, rows, cfg)
    out = Path(cfg.out)
    name = cfg.name or out.name
    with staged_folder(out) as tmp:  # a reader sees the old training set or the new one, never a mix
        metadata = _write(tmp, out, name, cfg, log, tables, info)
    return metadata


def _write(tmp: Path, out: Path, name: str, cfg: PrepareConfig, log: ClickLog, tables: dict, info: dict) -> dict:
    """The split files, metadata.json and ranking.yaml into the staging folder `tmp`; returns the metadata."""
    for s, table in tables.items():
        (tmp / s).mkdir(parents=True)
        pq.write_table(table, tmp / s / "part-00000.parquet")
    metadata = {
        "embedding_version": name,
        "embedding_dim": 0,
        "world": None,  # no ground truth: ranking.train never joins an oracle to these rows
        "source": {"input": str(cfg.input), "format": cfg.format, "rows": int(len(log.frame))},
        "label": LABEL,
        "columns": [{"name": f.name, "dtype": str(f.type)} for f in tables["train"].schema],
        "features": {"id_features": info["id_features"], "dense_features": info["dense_features"],
                     "keys": info["keys"]},
        "vocab_sizes": info["vocab_sizes"],
        "rows": {s: t.num_rows for s, t in tables.items()},
        "ctr": {s: float(np.mean(t.column(LABEL).to_numpy())) for s, t in tables.items()},
        "split": {"kind": "fold" if cfg.folds else cfg.split, "folds": cfg.folds, "fold": cfg.fold,
                  "valid_ratio": cfg.valid_ratio, "test_ratio": cfg.test_ratio, "seed": cfg.seed},
        "config": config_to_dict(cfg),
    }
    (tmp / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    (tmp / "ranking.yaml").write_text(yaml.safe_dump(ranking_overrides(out, name, info, tables['train'].num_rows), sort_keys=False))
    return metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ranking.prepare", description=__doc__.split("\n")[0])
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = load_config(PrepareConfig, args.config, args.overrides)
    meta = prepare(cfg)
    print(f"wrote {cfg.out}: " + ", ".join(f"{s} {n:,} rows (ctr {meta['ctr'][s]:.3f})" for s, n in
                                           meta["rows"].items()) +
          f"; {len(meta['features']['id_features'])} id and {len(meta['features']['dense_features'])} dense "
          f"features\ntrain with: python -m ranking.train --config {Path(cfg.out) / 'ranking.yaml'}", flush=True)
    return 0


if __name__ == "__main__":
    exit_on(main, ConfigError, LoaderError)
