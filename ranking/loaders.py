"""Readers of public click-log formats into the click-log contract (feature_store.schema.tables.CLICK_LOG).

    criteo    label, I1..I13 (integers, may be empty or negative), C1..C26 (hashed hex, may be empty); tab-separated,
              no header (Criteo's Display Advertising Challenge `train.txt`, and its samples)
    avazu     id, click, hour (YYMMDDHH), C1, banner_pos, site_*, app_*, device_*, C14..C21 (24 columns, comma-
              separated, with or without the header line); `hour` becomes `ts` (UTC) and `hour_of_day`
    libfm     one-hot libFM / libSVM lines `label idx:1 idx:1 ...` (iPinYou as make-ipinyou-data writes it) with a
              featindex file of `field:value<TAB>idx` lines: one categorical column per field
    csv, parquet   any table with a 0/1 label column; numeric columns become dense (and bucketed) features,
              string columns categorical ones, unless the config lists them

Each loader returns a `ClickLog`: a pandas DataFrame whose label column is `click` (int8), the names of its
categorical and numeric feature columns, and the column to split on by time (if any). No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CRITEO_INT = tuple(f"I{i}" for i in range(1, 14))
CRITEO_CAT = tuple(f"C{i}" for i in range(1, 27))
CRITEO_COLUMNS = ("label",) + CRITEO_INT + CRITEO_CAT
AVAZU_COLUMNS = ("id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
                 "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
                 "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21")
AVAZU_CAT = tuple(c for c in AVAZU_COLUMNS if c not in ("id", "click", "hour")) + ("hour_of_day",)
# The optional ids of the click-log contract, passed through when a table has them.
KEY_COLUMNS = ("impression_id", "request_id", "user_id", "query_id", "product_id", "position")
LABEL = "click"


class LoaderError(ValueError):
    """A file does not follow the format it was read as: names the file, the line or column and the problem."""


@dataclass
class ClickLog:
    frame: pd.DataFrame  # `click` (int8 0/1) + feature columns + optional ids / ts
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    time_column: str = ""  # what a time-based split sorts on ("" = none known)
    source: str = ""


def _files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
        if not files:
            raise LoaderError(f"{path}: no files in the folder")
        return files
    if not path.exists():
        raise LoaderError(f"{path} does not exist")
    return [path]


def binary_label(values: pd.Series, name: str, source: str) -> np.ndarray:
    """Any integer, float or boolean 0/1 column -> int8; LoaderError naming the bad values otherwise."""
    if values.isna().any():
        raise LoaderError(f"{source}: label '{name}' has {int(values.isna().sum())} empty values")
    given = values
    if values.dtype == object:
        values = pd.to_numeric(values, errors="coerce")
    v = values.to_numpy(dtype=np.float64)
    bad = ~np.isin(v, (0.0, 1.0))
    if bad.any():  # the example as the file has it ('yes', 2.0), not as numpy shows it (nan, np.float64(2.0))
        example = given.to_numpy()[bad][0]
        example = example.item() if isinstance(example, np.generic) else example
        raise LoaderError(f"{source}: label '{name}' must hold only 0 and 1; found {int(bad.sum())} other value(s), "
                          f"e.g. {example!r}")
    return v.astype(np.int8)


def load_criteo(path: str | Path, max_rows: int = 0) -> ClickLog:
    """Criteo's tab-separated dac format (no header); empty fields are missing values."""
    frames = []
    for f in _files(path):
        df = pd.read_csv(f, sep="\t", header=None, dtype=str, keep_default_na=False, na_values=[""],
                         nrows=max_rows or None, quoting=3)
        if df.shape[1] != len(CRITEO_COLUMNS):
            raise LoaderError(f"{f}: Criteo lines have {len(CRITEO_COLUMNS)} tab-separated fields (label, I1-I13, "
                              f"C1-C26); found {df.shape[1]}")
        df.columns = list(CRITEO_COLUMNS)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if max_rows:
        df = df.iloc[:max_rows]
    out = pd.DataFrame({LABEL: binary_label(df["label"], "label", str(path))})
    for c in CRITEO_INT:
        values = pd.to_numeric(df[c], errors="coerce")
        if (values.notna() != df[c].notna()).any():
            raise LoaderError(f"{path}: Criteo integer column {c} holds a value that is not a number")
        out[c] = values.astype(np.float64)
    for c in CRITEO_CAT:
        out[c] = df[c].astype(object)
    return ClickLog(out, CRITEO_CAT, CRITEO_INT, "", str(path))


def load_avazu(path: str | Path, max_rows: int = 0) -> ClickLog:
    """Avazu's 24 comma-separated columns, with or without the header; `hour` YYMMDDHH -> ts (UTC), hour_of_day."""
    frames = []
    for f in _files(path):
        with open(f) as fh:
            first = fh.readline().strip().split(",")
        header = first[:2] == ["id", "click"]
        df = pd.read_csv(f, header=0 if header else None, dtype=str, keep_default_na=False, na_values=[""],
                         nrows=max_rows or None)
        if df.shape[1] != len(AVAZU_COLUMNS):
            raise LoaderError(f"{f}: Avazu lines have {len(AVAZU_COLUMNS)} comma-separated fields; found "
                              f"{df.shape[1]}")
        if header and list(df.columns) != list(AVAZU_COLUMNS):
            raise LoaderError(f"{f}: the header is not Avazu's ({', '.join(AVAZU_COLUMNS)})")
        df.columns = list(AVAZU_COLUMNS)
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    if max_rows:
        df = df.iloc[:max_rows]
    ts = pd.to_datetime(df["hour"], format="%y%m%d%H", errors="coerce", utc=True)
    if ts.isna().any():
        raise LoaderError(f"{path}: Avazu 'hour' must be YYMMDDHH; found {df['hour'][ts.isna()].iloc[0]!r}")
    out = pd.DataFrame({LABEL: binary_label(df["click"], "click", str(path)), "ts": ts})
    for c in AVAZU_CAT[:-1]:
        out[c] = df[c].astype(object)
    out["hour_of_day"] = ts.dt.hour.astype(str).astype(object)
    return ClickLog(out, AVAZU_CAT, (), "ts", str(path))


def read_featindex(path: str | Path) -> dict[int, tuple[str, str]]:
    """featindex lines `field:value<whitespace>idx` -> {idx: (field, value)} (a name without ':' is its own field)."""
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise LoaderError(f"{path}, line {n}: expected 'field:value<TAB>index', got {line!r}")
        name, idx = parts[0], int(parts[1])
        field, _, value = name.partition(":")
        out[idx] = (field, value if _ else "1")
    return out


def load_libfm(path: str | Path, featindex: str | Path, max_rows: int = 0) -> ClickLog:
    """One-hot libFM lines `label idx:1 ...` and the featindex naming each index's field and value: one categorical
    column per field (several values of one field in a row are joined with '|'; a field absent from a row is
    missing)."""
    index = read_featindex(featindex)
    fields = tuple(dict.fromkeys(f for f, _ in index.values()))
    labels, rows = [], []
    for f in _files(path):
        with open(f) as fh:
            for n, line in enumerate(fh, 1):
                parts = line.split()
                if not parts:
                    continue
                row: dict[str, list[str]] = {}
                for item in parts[1:]:
                    idx, _, value = item.partition(":")
                    if not idx.isdigit() or int(idx) not in index:
                        raise LoaderError(f"{f}, line {n}: feature {item!r} is not an index of the featindex")
                    if value and float(value) == 0.0:
                        continue
                    field, v = index[int(idx)]
                    row.setdefault(field, []).append(v)
                labels.append(parts[0])
                rows.append({k: "|".join(sorted(v)) for k, v in row.items()})
                if max_rows and len(rows) >= max_rows:
                    break
        if max_rows and len(rows) >= max_rows:
            break
    out = pd.DataFrame({LABEL: binary_label(pd.Series(labels), "label", str(path))})
    frame = pd.DataFrame.from_records(rows, columns=list(fields))
    for c in fields:
        out[c] = frame[c].astype(object)
    return ClickLog(out, fields, (), "", str(path))


def load_table(path: str | Path, label: str, categorical: tuple[str, ...] = (), numeric: tuple[str, ...] = (),
               fmt: str = "auto", max_rows: int = 0, time_column: str = "") -> ClickLog:
    """A CSV or parquet file (or folder of them) with a 0/1 label column: numeric columns are numeric features and
    string columns categorical ones unless `categorical` / `numeric` list them; the contract's optional ids pass
    through under their names."""
    files = _files(path)
    if fmt == "auto":
        fmt = "parquet" if files[0].suffix == ".parquet" else "csv"
    frames = [pd.read_parquet(f) if fmt == "parquet" else pd.read_csv(f) for f in files]
    df = pd.concat(frames, ignore_index=True)
    if max_rows:
        df = df.iloc[:max_rows]
    if label not in df.columns:
        raise LoaderError(f"{path}: no label column '{label}' (columns: {', '.join(map(str, df.columns))})")
    named = set(categorical) | set(numeric)
    missing = [c for c in named | ({time_column} if time_column else set()) if c not in df.columns]
    if missing:
        raise LoaderError(f"{path}: the config names column(s) the table lacks: {', '.join(sorted(missing))}")
    out = pd.DataFrame({LABEL: binary_label(df[label], label, str(path))})
    passthrough = [c for c in KEY_COLUMNS + ("ts",) if c in df.columns and c not in named and c != label]
    if time_column and time_column not in passthrough and time_column not in named:
        passthrough.append(time_column)
    for c in passthrough:
        out[c] = df[c]
    if not named:
        rest = [c for c in df.columns if c != label and c not in passthrough]
        numeric = tuple(c for c in rest if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]))
        categorical = tuple(c for c in rest if c not in numeric)
    for c in numeric:
        if not pd.api.types.is_numeric_dtype(df[c]):
            raise LoaderError(f"{path}: numeric column '{c}' has dtype {df[c].dtype}")
        out[c] = df[c].astype(np.float64)
    for c in categorical:
        out[c] = df[c].astype(object).where(df[c].notna(), None)
    if not categorical and not numeric:
        raise LoaderError(f"{path}: no feature columns besides the label '{label}'")
    return ClickLog(out, tuple(categorical), tuple(numeric), time_column, str(path))
