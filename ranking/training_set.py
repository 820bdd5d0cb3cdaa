"""Training-set folders -> checked numpy columns (pyarrow; no TensorFlow). ranking/pipeline.py turns them into tf.data.

The feature store writes a training set per embedding version (docs/design.md, sections 3 and 9):

    data/<name>/training_sets/<embedding_version>/{train,valid,test}/part-*.parquet   + metadata.json

one row per impression: keys (impression_id, request_id, ts, user_id, query_id, product_id, ad_id, campaign_id,
advertiser_id, store_id), ordinary features (position, device, aisle, brand, price, discount, rating, ...),
point-in-time historical counts named `<entity>_<impressions|clicks>_<window>`, the DashCLIP embeddings
(product_embedding, query_embedding, history_embedding: list<float32>[embedding_dim], zero when unknown) and the
labels (click, conversion).

`load_training_set` reads only the columns the config names, column-wise with pyarrow (no per-row Python), and
checks everything that could go wrong before any training starts: a missing feature, a NaN in a dense feature
(`nan_policy`: fail, or impute with the train mean), an embedding of the wrong width, an empty split, labels other
than 0/1, an infinite dense value or embedding component, a repeated impression_id (within a split or across
splits), a `ts` without a time zone, a file that is not parquet or a metadata.json that is not a JSON object.
Every error is a `TrainingSetError` naming the split (and file), the column and the problem. Embedding columns are
stored once per distinct vector (`Embeddings`): a product's vector repeats on every impression that shows it.
`first_rows` reads the first rows of a split as model inputs (the export's warm-up requests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from core.files import read_json_object
from feature_store.schema import checked_embedding_matrix
from ranking.config import FeatureConfig

SPLITS = ("train", "valid", "test")
COUNT_PATTERN = re.compile(
    r"^(?P<entity>[A-Za-z0-9]+(?:_[A-Za-z0-9]+)*?)_(?P<kind>impressions|clicks)_(?P<window>[A-Za-z0-9]+)$")
# Columns evaluation reads besides the model inputs when the training set has them: GAUC groups (request_id,
# user_id), slices (query_id, product_id, position) and the oracle join (impression_id). All optional: a user's
# click log (feature_store.schema TABLES["click_log"]) may have none; each metric that needs one is then skipped
# and the comparison says so (ranking.report.skipped_evaluations).
KEY_COLUMNS = ("impression_id", "request_id", "user_id", "query_id", "product_id", "position")


class TrainingSetError(ValueError):
    """A training set does not fit the config: names the split (or file), the column and the problem."""


@dataclass(frozen=True)
class FeatureSpec:
    """The resolved model inputs: what every model, the SavedModel signature and the input pipeline agree on."""

    int_ids: tuple[str, ...]
    str_ids: tuple[str, ...]
    dense: tuple[str, ...]  # configured dense features, then discovered counts
    log_dense: tuple[str, ...]  # the subset transformed with signed log1p
    ctr_pairs: tuple[tuple[str, str, str], ...]  # (name, clicks column, impressions column)
    embeddings: tuple[str, ...]  # (product, query, history) column names
    embedding_dim: int
    label: str

    @property
    def ids(self) -> tuple[str, ...]:
        return self.int_ids + self.str_ids

    @property
    def inputs(self) -> tuple[str, ...]:
        """Every raw input the neural models take, in signature order."""
        return self.ids + self.dense + self.embeddings

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


class Embeddings:
    """An embedding column stored once per distinct vector: `table` [U, dim] and the row index [n] into it.

    A product's (or query's) vector repeats on every impression that shows it, so the distinct vectors take a
    small fraction of the memory of the [n, dim] column. Indexing with a slice or an index array gives the
    dense rows [k, dim]; `subset(rows)` gives another Embeddings sharing the table.
    """

    def __init__(self, table: np.ndarray, index: np.ndarray):
        self.table, self.index = table, index

    @classmethod
    def from_dense(cls, values: np.ndarray) -> "Embeddings":
        """Deduplicate [n, dim] float32 rows (exactly: the random-projection keys are verified)."""
        n, dim = values.shape
        if n == 0:
            return cls(values, np.zeros(0, np.int64))
        proj = np.random.default_rng(20260105).normal(size=(dim, 2)).astype(np.float32)
        keys = np.ascontiguousarray(values @ proj).view(np.uint64).reshape(-1)  # two float32 keys per row
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        table, index = values[first], inverse.reshape(-1).astype(np.int64)
        for start in range(0, n, 65536):  # verify in chunks: a key collision must never merge two vectors
            if not np.array_equal(table[index[start:start + 65536]], values[start:start + 65536]):
                return cls(values, np.arange(n, dtype=np.int64))
        return cls(np.ascontiguousarray(table), index)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index), self.table.shape[1])

    @property
    def dtype(self):
        return self.table.dtype

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows) -> np.ndarray:
        return self.table[self.index[rows]]

    def subset(self, rows) -> "Embeddings":
        return Embeddings(self.table, self.index[rows])


@dataclass
class Split:
    """One split in memory: {column: numpy array}; strings as UTF-8 bytes, dense as float32, embeddings as
    `Embeddings` (distinct vectors + row index), the label as "__label__" (int8)."""

    name: str
    columns: dict[str, np.ndarray]
    source: str = ""

    def __post_init__(self):
        self.tf_variables = None  # ranking.pipeline.make_dataset's tf.Variable copies, made once per split

    def __len__(self) -> int:
        return len(self.columns["__label__"])

    @property
    def labels(self) -> np.ndarray:
        return self.columns["__label__"]

    def take(self, rows: np.ndarray) -> "Split":
        return Split(self.name, {k: (v.subset(rows) if isinstance(v, Embeddings) else v[rows])
                                 for k, v in self.columns.items()}, self.source)


@dataclass
class TrainingSet:
    path: Path
    metadata: dict
    embedding_version: str
    spec: FeatureSpec
    splits: dict[str, Split]
    nan_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> column -> NaNs imputed
    impute_values: dict[str, float] = field(default_factory=dict)  # dense column -> train mean (raw units)

    def __getitem__(self, split: str) -> Split:
        return self.splits[split]


# ------------------------------------------------------------------------------------------------ locating


def resolve_training_set(data_dir: str | Path, embedding_version: str = "", path: str | Path = "") -> Path:
    """The training-set folder: `path` if given, else data_dir/training_sets/<embedding_version>.

    With no version given, the only version present is used; several versions need an explicit choice.
    """
    if path:
        found = Path(path)
        if not found.is_dir():
            raise TrainingSetError(f"training set folder {found} does not exist")
        return found
    root = Path(data_dir) / "training_sets"
    if embedding_version:
        found = root / embedding_version
        if not found.is_dir():
            have = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            raise TrainingSetError(f"no training set for embedding_version '{embedding_version}' under {root} "
                                   f"(found: {', '.join(have) or 'none'})")
        return found
    if not root.is_dir():
        raise TrainingSetError(f"no training sets under {root}: build one with the feature store first")
    versions = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(versions) != 1:
        names = ", ".join(p.name for p in versions) or "none"
        raise TrainingSetError(f"{root} holds {len(versions)} training sets ({names}): set embedding_version")
    return versions[0]


def _read_metadata(folder: Path) -> dict:
    """metadata.json as a dict ({} when absent); a TrainingSetError naming the file when it is not a JSON object
    or its embedding_dim is not a non-negative integer."""
    path = folder / "metadata.json"
    if not path.exists():
        return {}
    metadata = read_json_object(path, TrainingSetError)
    dim = metadata.get("embedding_dim", 0)
    if type(dim) is not int or dim < 0:
        raise TrainingSetError(f"{path}: 'embedding_dim' must be a non-negative integer, got {dim!r}")
    return metadata


def _parquet(read, file: Path, split: str):
    """read(file), with a file that is not parquet (truncated, another format) a TrainingSetError naming it."""
    try:
        return read(file)
    except (pa.ArrowInvalid, OSError) as err:
        raise TrainingSetError(f"split '{split}' ({file}): not a readable parquet file (truncated or another "
                               f"format: {err})") from None


def _check_time_zone(schema: pa.Schema, split: str, file: Path) -> None:
    """A `ts` column must be UTC instants: a naive one would be read in whatever zone a later reader assumes."""
    if "ts" in schema.names:
        t = schema.field("ts").type
        if not pa.types.is_timestamp(t) or t.tz is None:
            raise TrainingSetError(f"split '{split}' ({file}): column 'ts' has dtype {t}; expected a timestamp "
                                   f"with a time zone (UTC instants, e.g. timestamp[us, tz=UTC])")


def _split_files(folder: Path, split: str) -> list[Path]:
    split_dir = folder / split
    if not split_dir.is_dir():
        raise TrainingSetError(f"split '{split}': folder {split_dir} does not exist")
    files = sorted(p for p in split_dir.glob("*.parquet") if not p.name.startswith((".", "_")))
    if not files:
        raise TrainingSetError(f"split '{split}' is empty: no parquet files in {split_dir}")
    return files


# ------------------------------------------------------------------------------------------------ resolving


def discover_counts(column_names) -> list[str]:
    """Historical count columns (`<entity>_<impressions|clicks>_<window>`), in table order."""
    return [c for c in column_names if COUNT_PATTERN.match(c)]


def resolve_spec(fc: FeatureConfig, schema: pa.Schema, embedding_dim: int, source: str,
                 use_embeddings: bool = True) -> FeatureSpec:
    """The model inputs for this config and this table; TrainingSetError if a named feature is missing."""
    names = schema.names
    counts = discover_counts(names) if fc.count_features == "auto" else []
    dense = tuple(fc.dense_features) + tuple(c for c in counts if c not in fc.dense_features)
    embeddings = (fc.product_embedding, fc.query_embedding, fc.history_embedding) if use_embeddings else ()
    wanted = list(fc.id_features) + list(dense) + list(embeddings) + [fc.label]
    missing = [c for c in dict.fromkeys(wanted) if c not in names]
    if missing:
        raise TrainingSetError(f"{source}: the config names column(s) the training set lacks: {', '.join(missing)} "
                               f"(the table has: {', '.join(names)})")
    str_ids, int_ids = [], []
    for c in fc.id_features:
        t = schema.field(c).type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
            str_ids.append(c)
        elif pa.types.is_integer(t):
            int_ids.append(c)
        else:
            raise TrainingSetError(f"{source}: id feature '{c}' has dtype {t}; expected an integer or string column")
    for c in dense:
        t = schema.field(c).type
        if not (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t)):
            raise TrainingSetError(f"{source}: dense feature '{c}' has dtype {t}; expected float or integer")
    for c in embeddings:
        t = schema.field(c).type
        if not ((pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))
                and pa.types.is_floating(t.value_type)):
            raise TrainingSetError(f"{source}: embedding column '{c}' has dtype {t}; expected list<float32>")
    pairs = []
    if fc.ctr_features:
        for c in dense:
            m = COUNT_PATTERN.match(c)
            if m and m["kind"] == "clicks":
                imps = f"{m['entity']}_impressions_{m['window']}"
                if imps in dense:
                    pairs.append((f"{m['entity']}_ctr_{m['window']}", c, imps))
    log_dense = tuple(c for c in dense if c in fc.log_features or c in counts)
    return FeatureSpec(tuple(int_ids), tuple(str_ids), dense, log_dense, tuple(pairs), embeddings,
                       int(embedding_dim), fc.label)


# ------------------------------------------------------------------------------------------------ reading


def _read_split(folder: Path, split: str, columns: list[str]) -> tuple[pa.Table, str]:
    files = _split_files(folder, split)
    parts = []
    for f in files:
        schema = _parquet(pq.read_schema, f, split)
        _check_time_zone(schema, split, f)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise TrainingSetError(f"split '{split}' ({f}): missing column(s) {', '.join(missing)}")
        parts.append(_parquet(lambda file: pq.read_table(file, columns=columns), f, split))
    source = str(folder / split)
    try:
        table = pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise TrainingSetError(f"split '{split}' ({source}): its files' columns do not concatenate: {err}") from None
    if table.num_rows == 0:
        raise TrainingSetError(f"split '{split}' is empty: {source} has no rows")
    return table, source


def _int_column(col: pa.ChunkedArray, name: str, where: str) -> np.ndarray:
    if col.null_count:
        raise TrainingSetError(f"{where}: column '{name}' has {col.null_count} null values")
    if not pa.types.is_integer(col.type):
        raise TrainingSetError(f"{where}: column '{name}' has dtype {col.type}, expected an integer")
    return col.cast(pa.int64()).to_numpy()


def _key_column(col: pa.ChunkedArray, name: str, where: str) -> np.ndarray:
    """An evaluation key (request, user, query, product id, position): int64, or UTF-8 bytes for string ids."""
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return _bytes_column(col, name, where)
    return _int_column(col, name, where)


def _label_column(col: pa.ChunkedArray, name: str, where: str) -> np.ndarray:
    """The label as int8: any integer, float or boolean column holding only 0 and 1 (0.0 / 1.0 / False / True)."""
    if col.null_count:
        raise TrainingSetError(f"{where}: label '{name}' has {col.null_count} null values")
    t = col.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        raise TrainingSetError(f"{where}: label '{name}' has dtype {t}; expected an integer, float or boolean 0/1")
    values = col.cast(pa.float64()).to_numpy() if not pa.types.is_boolean(t) else \
        col.to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        raise TrainingSetError(f"{where}: label '{name}' must be 0 or 1 (any integer, float or boolean dtype); "
                               f"found {int(bad.sum())} other value(s), e.g. {float(values[bad][0])!r}")
    return values.astype(np.int8)


def _bytes_column(col: pa.ChunkedArray, name: str, where: str) -> np.ndarray:
    """Strings -> numpy fixed-width UTF-8 bytes through the (small) dictionary: no per-row Python."""
    if col.null_count:
        raise TrainingSetError(f"{where}: column '{name}' has {col.null_count} null values")
    encoded = pc.dictionary_encode(col.cast(pa.string())).combine_chunks()
    words = np.array([s.encode("utf-8") for s in encoded.dictionary.to_pylist()] or [b""], dtype=np.bytes_)
    return words[encoded.indices.to_numpy(zero_copy_only=False)]


def _dense_column(col: pa.ChunkedArray) -> np.ndarray:
    """float32 with nulls as NaN (integers beyond 2**24 rounded, as float32 does; floats beyond its range
    become inf, which the caller refuses)."""
    return col.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False).astype(np.float32)


def _check_unique_impressions(splits: dict[str, "Split"]) -> None:
    """impression_id, when the set has it, identifies one row: a repeat within a split weighs that impression twice,
    one across splits leaks a test row into training."""
    if not all("impression_id" in s.columns for s in splits.values()):
        return
    seen: dict[str, np.ndarray] = {}
    for name, split in splits.items():
        ids = split.columns["impression_id"]
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise TrainingSetError(f"split '{name}' ({split.source}): column 'impression_id' has "
                                   f"{int((counts - 1).sum())} duplicate values (e.g. {unique[counts > 1][0].item()!r} "
                                   f"appears {int(counts.max())} times)")
        for other, before in seen.items():
            shared = np.intersect1d(unique, before, assume_unique=True)
            if len(shared):
                raise TrainingSetError(f"split '{name}' ({split.source}): column 'impression_id' shares "
                                       f"{len(shared)} values with split '{other}' (e.g. {shared[0].item()!r}); a row "
                                       f"belongs to one split")
        seen[name] = unique


def _embedding_column(col: pa.ChunkedArray, name: str, dim: int, where: str) -> "Embeddings":
    return Embeddings.from_dense(checked_embedding_matrix(col, name, dim, f"{where}: ", TrainingSetError))


def _id_columns(table: pa.Table, spec: FeatureSpec, where: str) -> dict[str, np.ndarray]:
    """The id inputs: int64 ids as int64, string ids as UTF-8 bytes."""
    cols = {c: _int_column(table.column(c), c, where) for c in spec.int_ids}
    cols.update({c: _bytes_column(table.column(c), c, where) for c in spec.str_ids})
    return cols


def load_training_set(folder: str | Path, fc: FeatureConfig, use_embeddings: bool = True,
                      max_rows: int = 0, seed: int = 0) -> TrainingSet:
    """Read and check the train/valid/test splits of a training set; see the module docstring.

    max_rows > 0 keeps a random sample of that many rows per split (for quick experiments).
    """
    folder = Path(folder)
    metadata = _read_metadata(folder)
    version = str(metadata.get("embedding_version") or folder.name)

    train_files = _split_files(folder, "train")
    schema = _parquet(pq.read_schema, train_files[0], "train")
    dim = metadata.get("embedding_dim", 0)
    if use_embeddings and not dim and fc.product_embedding in schema.names:
        probe = _parquet(lambda f: pq.read_table(f, columns=[fc.product_embedding]), train_files[0], "train")
        probe = probe.column(0).drop_null()
        dim = len(probe[0].as_py() or ()) if len(probe) else 0
    spec = resolve_spec(fc, schema, dim, str(folder / "train"), use_embeddings)
    if use_embeddings and dim <= 0:
        raise TrainingSetError(f"{folder}: cannot tell embedding_dim (metadata.json lacks it and the train split "
                               f"has no rows)")

    keys = [c for c in KEY_COLUMNS if c in schema.names]
    columns = list(dict.fromkeys(keys + list(spec.ids) + list(spec.dense) + list(spec.embeddings)
                                 + [spec.label]))
    splits: dict[str, Split] = {}
    nan_counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        table, source = _read_split(folder, split, columns)
        where = f"split '{split}' ({source})"
        if max_rows and table.num_rows > max_rows:
            rows = np.sort(np.random.default_rng([seed, SPLITS.index(split)]).choice(table.num_rows, max_rows,
                                                                                     replace=False))
            table = table.take(pa.array(rows))
        cols: dict[str, np.ndarray] = {c: _key_column(table.column(c), c, where) for c in keys}
        cols.update(_id_columns(table, spec, where))
        nan_counts[split] = {}
        for c in spec.dense:
            values = _dense_column(table.column(c))
            n_nan = int(np.isnan(values).sum())
            if n_nan:
                if fc.nan_policy == "fail":
                    raise TrainingSetError(
                        f"{where}: dense feature '{c}' has {n_nan} NaN/null values; fix the data or set "
                        f"features.nan_policy=impute to fill them with the train mean")
                nan_counts[split][c] = n_nan
            if (n_inf := int(np.isinf(values).sum())):  # inf (or a float64 beyond float32) trains a NaN model
                row = int(np.flatnonzero(np.isinf(values))[0])
                raise TrainingSetError(f"{where}: dense feature '{c}' has {n_inf} infinite values (e.g. "
                                       f"{float(values[row])} in row {row})")
            cols[c] = values
        for c in spec.embeddings:
            cols[c] = _embedding_column(table.column(c), c, spec.embedding_dim, where)
        cols["__label__"] = _label_column(table.column(spec.label), spec.label, where)
        splits[split] = Split(split, cols, source)

    _check_unique_impressions(splits)
    train_y = splits["train"].labels
    if train_y.min() == train_y.max():
        raise TrainingSetError(f"split 'train': label '{spec.label}' has a single class; nothing to learn")

    # Impute with the train mean (nan_policy=impute); the models repeat this in their graph for serving.
    impute = {}
    for c in spec.dense:
        train_values = splits["train"].columns[c]
        mean = float(np.nanmean(train_values)) if not np.isnan(train_values).all() else 0.0
        impute[c] = mean
        for s in splits.values():
            v = s.columns[c]
            if np.isnan(v).any():
                s.columns[c] = np.where(np.isnan(v), np.float32(mean), v)
    return TrainingSet(folder, metadata, version, spec, splits, nan_counts, impute)


def first_rows(folder: str | Path, split: str, spec: FeatureSpec, n: int) -> dict[str, np.ndarray]:
    """The first n rows of a split's first file as the model's input columns (ids, dense features as they are,
    embeddings): real rows for the export's warm-up requests, read without loading the split."""
    first = _split_files(Path(folder), split)[0]
    batch = next(pq.ParquetFile(first).iter_batches(batch_size=n, columns=list(spec.inputs)))
    table = pa.Table.from_batches([batch])
    cols = _id_columns(table, spec, str(first))
    cols.update({c: _dense_column(table.column(c)) for c in spec.dense})
    for c in spec.embeddings:
        cols[c] = _embedding_column(table.column(c), c, spec.embedding_dim, str(first))
    return cols


def dense_features(columns: dict[str, np.ndarray], spec: FeatureSpec, base_rate: float, prior: float) -> np.ndarray:
    """The dense inputs before standardising, in numpy: [n, D'] = spec.dense (signed log1p where listed), then one
    smoothed CTR logit per (clicks, impressions) pair. `FeatureEncoder` computes the same in-graph."""
    out = []
    for c in spec.dense:
        x = columns[c].astype(np.float64)
        out.append(np.sign(x) * np.log1p(np.abs(x)) if c in spec.log_dense else x)
    for _, clicks, imps in spec.ctr_pairs:
        ctr = (columns[clicks] + prior * base_rate) / (np.maximum(columns[imps], 0.0) + prior)
        ctr = np.clip(ctr, 1e-6, 1 - 1e-6)
        out.append(np.log(ctr / (1 - ctr)))
    n = len(columns["__label__"]) if "__label__" in columns else len(next(iter(columns.values())))
    return np.stack(out, axis=1) if out else np.zeros((n, 0))
