"""Embedding columns (list<float32>, one vector per row) as numpy matrices and back.

- `embedding_matrix(column)`: a validated column -> float32 [N, D].
- `checked_embedding_matrix(column, name, dim)`: a column from a user's file -> float32 [N, dim], with an error
  naming the column for null rows, rows of another width or NaN / infinite components.
- `embedding_array(matrix)`: float32 [N, D] -> a list<float32> column, the bytes copied unchanged.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def embedding_matrix(column, dim: int | None = None) -> np.ndarray:
    """list<float32> column without nulls -> [N, D] float32 (rows validated to one length)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(column)
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(n, -1) if n else np.zeros((0, dim or 0), np.float32)


def checked_embedding_matrix(column, name: str, dim: int, where: str = "",
                             error: type[Exception] = ValueError) -> np.ndarray:
    """A list<float> or fixed-size-list column from a user's file -> float32 [N, dim]; `error`, prefixed with
    `where` and naming the column, for null rows, rows of another width or NaN / infinite components."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if column.null_count:
        raise error(f"{where}embedding column '{name}' has {column.null_count} null rows (unknown embeddings must "
                    f"be zero vectors)")
    if pa.types.is_fixed_size_list(column.type):
        column = column.cast(pa.list_(column.type.value_type))
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    wrong = np.flatnonzero(lengths != dim)
    if len(wrong):
        raise error(f"{where}embedding column '{name}' should have width {dim} but {len(wrong)} of {len(column)} "
                    f"rows have another width (e.g. {int(lengths[wrong[0]])}, row {int(wrong[0])})")
    values = embedding_matrix(column, dim)
    if not np.isfinite(values).all():  # an inf trains a NaN model as surely as a NaN does
        nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
        kinds = " and ".join(k for k, n in (("NaN", nan), ("infinite", inf)) if n)
        raise error(f"{where}embedding column '{name}' has {kinds} components ({nan} NaN, {inf} inf, in "
                    f"{len(rows)} rows, e.g. row {int(rows[0])})")
    return values


def embedding_array(vectors: np.ndarray, null_rows: np.ndarray | None = None) -> pa.Array:
    """float [N, D] -> list<float32> of D per row (float32 bytes copied unchanged); `null_rows` (bool [N]) marks
    rows that are null."""
    n, dim = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat, mask=None if null_rows is None else pa.array(null_rows))
