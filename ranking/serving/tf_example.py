"""Model input columns <-> serialized `tf.Example` protos, for the SavedModel's `serve_tf_example` signature.

    spec = parse_spec(info["inputs"])                     # for tf.io.parse_example inside the signature
    examples = encode_examples(columns, info["inputs"])   # list[bytes], one tf.Example per row
    columns = table_to_columns(arrow_table, info["inputs"])   # an Arrow table's model inputs as numpy columns

`inputs` is model_info.json's "inputs" (ranking.serving.contract.signature_description): {name: {"dtype": "int64" |
"string" | "float32", "shape": [-1] or [-1, dim]}}. Each id or dense input is one value per example; each
embedding is a float list of exactly `dim` values. Encoding goes numpy -> Arrow list columns -> tfx-bsl's C++
RecordBatchToExamplesEncoder, so no Python runs per value or per row. Every problem with the columns (missing,
wrong dtype, wrong width, ragged row counts) is a ValueError naming the column and what was expected.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pyarrow as pa
from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

from feature_store.schema import checked_embedding_matrix
from ranking.tf_legacy_keras import tf
from ranking.training_set import Embeddings

DTYPES = ("int64", "string", "float32")


def _declared(name: str, entry: dict) -> tuple[str, int | None]:
    """(dtype, width) of one declared input: width None for a scalar per row, dim for an embedding."""
    dtype, shape = entry.get("dtype"), list(entry.get("shape", []))
    if dtype not in DTYPES:
        raise ValueError(f"input '{name}': dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if len(shape) == 1:
        return dtype, None
    if len(shape) == 2 and dtype == "float32" and isinstance(shape[1], int) and shape[1] > 0:
        return dtype, shape[1]
    raise ValueError(f"input '{name}': shape {shape} is not [-1] or [-1, dim] (float32)")


def parse_spec(inputs: dict[str, dict]) -> dict:
    """{name: tf.io.FixedLenFeature}: ids and dense -> FixedLenFeature([], dtype), embeddings -> ([dim], float32).

    No defaults: an example that lacks a feature fails tf.io.parse_example with an error naming the feature.
    """
    tf_dtype = {"int64": tf.int64, "string": tf.string, "float32": tf.float32}
    out = {}
    for name, entry in inputs.items():
        dtype, width = _declared(name, entry)
        out[name] = tf.io.FixedLenFeature([] if width is None else [width], tf_dtype[dtype])
    return out


def _as_numpy(values) -> np.ndarray:
    """A column as numpy: Embeddings (dedup'd) become their dense rows; lists become arrays."""
    if isinstance(values, Embeddings):
        return np.asarray(values[np.arange(len(values))])
    if hasattr(values, "numpy"):  # a tf.Tensor
        return values.numpy()
    return np.asarray(values)


def check_column(name: str, values, dtype: str, width: int | None) -> np.ndarray:
    """One column checked against its declared input and cast to it: int64 [n], float32 [n] or [n, width], or
    UTF-8 bytes [n] for strings. Integers are accepted for float inputs (exact up to 2**24); floats are never
    accepted for int64 ids (a float id is a bug upstream). ValueError names the column and what was expected."""
    values = _as_numpy(values)
    kind = values.dtype.kind
    if width is None and values.ndim != 1:
        raise ValueError(f"column '{name}': expected one {dtype} value per row (shape [n]), got shape "
                         f"{list(values.shape)}")
    if width is not None and (values.ndim != 2 or values.shape[1] != width):
        raise ValueError(f"column '{name}': expected a float32 embedding of width {width} (shape [n, {width}]), "
                         f"got shape {list(values.shape)}")
    if dtype == "int64":
        if kind not in "iu":
            raise ValueError(f"column '{name}': expected int64 ids, got dtype {values.dtype}")
        return values.astype(np.int64, copy=False)
    if dtype == "float32":
        if kind not in "fiu":
            raise ValueError(f"column '{name}': expected float32 values, got dtype {values.dtype}")
        return values.astype(np.float32, copy=False)
    if kind == "S":  # string ids: numpy bytes (S) or str (U) columns, or object arrays of either
        return values
    if kind == "U":
        return np.char.encode(values, "utf-8")
    if kind == "O" and all(isinstance(v, (bytes, str)) for v in values):
        return np.array([v.encode("utf-8") if isinstance(v, str) else v for v in values], dtype=object)
    raise ValueError(f"column '{name}': expected string ids (bytes or str), got dtype {values.dtype}")


def check_columns(columns: Mapping[str, np.ndarray], inputs: dict[str, dict]) -> dict[str, np.ndarray]:
    """Every declared input, checked and cast (see check_column); columns not declared are left out.

    ValueError for a missing column (naming its dtype and shape) or columns of different lengths.
    """
    missing = [name for name in inputs if name not in columns]
    if missing:
        wanted = ", ".join(f"{k} ({inputs[k]['dtype']} {inputs[k].get('shape')})" for k in missing)
        raise ValueError(f"missing column(s) for the model inputs: {wanted}")
    out, n = {}, None
    for name, entry in inputs.items():
        dtype, width = _declared(name, entry)
        out[name] = check_column(name, columns[name], dtype, width)
        if n is None:
            n = len(out[name])
        elif len(out[name]) != n:
            raise ValueError(f"column '{name}' has {len(out[name])} rows, the columns before it {n}")
    return out


def _arrow_column(values: np.ndarray, width: int | None) -> pa.Array:
    """A checked column as an Arrow list array (the encoder writes one list per row): [n] -> lists of 1 value,
    [n, dim] -> lists of dim values: one flat values buffer and int64 offsets (an arange), built in numpy."""
    n, per_row = len(values), 1 if width is None else width
    if values.dtype.kind in "SO":
        flat = pa.array(values, type=pa.binary())
    else:
        flat = pa.array(values.reshape(-1))
    offsets = pa.array(np.arange(0, n * per_row + 1, per_row, dtype=np.int64))
    return pa.LargeListArray.from_arrays(offsets, flat)


def encode_examples(columns: Mapping[str, np.ndarray], inputs: dict[str, dict]) -> list[bytes]:
    """Serialized tf.train.Example per row, with exactly the declared inputs (extra columns are ignored).

    columns: [n] arrays (int64 ids, bytes/str ids, float dense) or [n, dim] float32 embeddings (numpy or
    ranking.training_set.Embeddings). A missing column, a wrong width or a wrong dtype raises ValueError naming it.
    """
    checked = check_columns(columns, inputs)
    if not inputs or not len(next(iter(checked.values()))):
        return []
    arrays = [_arrow_column(checked[name], _declared(name, entry)[1]) for name, entry in inputs.items()]
    return RecordBatchToExamplesEncoder().encode(pa.RecordBatch.from_arrays(arrays, list(inputs)))


def table_to_columns(table: pa.Table, inputs: dict[str, dict], error: type[Exception] = ValueError
                     ) -> dict[str, np.ndarray]:
    """The model inputs of an Arrow table as numpy columns for encode_examples (column-wise, no per-row Python
    except for string ids, which are handed over as bytes). A null or an embedding of the wrong width raises
    `error` naming the column."""
    out = {}
    for name, entry in inputs.items():
        column = table.column(name).combine_chunks()
        if len(entry["shape"]) == 2:
            out[name] = checked_embedding_matrix(column, name, entry["shape"][1], error=error)
            continue
        if column.null_count:
            raise error(f"column '{name}' has {column.null_count} null values (the model needs one "
                        f"{entry['dtype']} per row)")
        if entry["dtype"] == "string":
            column = column.cast(pa.binary())
        out[name] = column.to_numpy(zero_copy_only=False)
    return out
