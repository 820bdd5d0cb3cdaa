"""Parquet reading and writing of the declared tables, validated on the way in and on the way out.

- `read_table(name, path)` reads a parquet file or a folder of parquet files (one folder per table, files
  `part-00000.parquet`, ... read in sorted order) and validates it; `if_present` reads optional columns where
  the table has them. A file pyarrow cannot read is an UnreadableTableError (a SchemaError) naming it.
- `table_columns(name, path)` lists the columns a stored table has, without reading its rows.
- `write_table(name, data, folder, part)` validates and writes `folder/part-{part:05d}.parquet` atomically and
  byte-deterministically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from core.files import staged_file
from feature_store.schema.tables import TableSchema
from feature_store.schema.validation import (SchemaError, conform_columns, missing_columns, table_schema, validate,
                                             validate_against)


class UnreadableTableError(SchemaError, pa.ArrowInvalid):
    """A file of a table that pyarrow cannot read (truncated, another format). A SchemaError naming the table and
    the file (pyarrow's own "magic bytes not found" names neither), and still the ArrowInvalid it was for callers
    that catch that."""


def _open(schema: TableSchema, file: Path, read):
    """read(file), with an unreadable file an UnreadableTableError naming it."""
    try:
        return read(file)
    except (pa.ArrowInvalid, OSError) as err:
        if isinstance(err, (FileNotFoundError, SchemaError)):
            raise
        raise UnreadableTableError(schema.name, None, f"not a readable parquet file (truncated or another format: "
                                   f"{err})", file) from None


def _parquet_files(schema: TableSchema, path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"table '{schema.name}': no parquet file or folder at {path}")
    files = sorted(p for p in path.glob("*.parquet") if p.is_file() and not p.name.startswith((".", "_")))
    if not files:
        raise FileNotFoundError(f"table '{schema.name}': no parquet files in folder {path}")
    return files


def table_columns(table_name: str, path: str | os.PathLike) -> tuple[str, ...]:
    """The column names a stored table has (every part's, in first-seen order), from the parquet footers only."""
    path = Path(path)
    schema = table_schema(table_name, path)
    names: dict[str, None] = {}
    for file in _parquet_files(schema, path):
        names.update(dict.fromkeys(_open(schema, file, pq.read_schema).names))
    return tuple(names)


def read_table(table_name: str, path: str | os.PathLike, columns: Iterable[str] | None = None,
               embedding_dim: int | None = None, if_present: Iterable[str] = ()) -> pa.Table:
    """Read and validate a table from a parquet file or a folder of parquet files (sorted file order).

    With `columns`, only those (plus the key columns) are read and checked; a requested column that is
    missing is an error (a SchemaError naming it), optional in the contract or not. `if_present` names
    columns to read too where the table has them (optional attributes a reader can do without); with
    `columns` None, every column the table has is read anyway.
    """
    path = Path(path)
    schema = table_schema(table_name, path)
    only = None
    files = _parquet_files(schema, path)
    if columns is not None:
        columns = list(columns)
        if_present = [c for c in if_present if c not in columns]
        if if_present:
            present = table_columns(table_name, path)
            columns += [c for c in if_present if c in present]
        only = tuple(dict.fromkeys([k for k in schema.keys if k not in columns] + columns))
    parts = []
    for file in files:
        f = _open(schema, file, pq.ParquetFile)
        present = f.schema_arrow.names
        if only is not None and (missing := [c for c in only if c not in present]):
            raise missing_columns(schema, missing, present, file)
        part = _open(schema, file, lambda _: f.read(columns=None if only is None else list(only)))
        arrays, names = conform_columns(schema, part, file, only)  # per part, so parts may differ in harmless dtypes
        parts.append(pa.Table.from_arrays(arrays, names=names))
    try:
        table = pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise SchemaError(schema.name, None, f"parts do not concatenate: {err}", path) from None
    return validate_against(schema, table, path, embedding_dim, only)


def write_table(table_name: str, data: Any, folder: str | os.PathLike, part: int = 0,
                embedding_dim: int | None = None) -> Path:
    """Validate `data` and write it atomically to `folder/part-{part:05d}.parquet` (zstd); returns the path.

    The same input gives the same bytes (no schema metadata, no write time in the file). Float and embedding
    columns are written without dictionary encoding: their values almost never repeat, so parquet's attempt at a
    dictionary costs time and saves nothing (a demo training-set part: write -22%, read -30%, same size).
    """
    folder = Path(folder)
    table = validate(table_name, data, source=folder, embedding_dim=embedding_dim)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"part-{part:05d}.parquet"
    with staged_file(target) as tmp:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=_dictionary_columns(table.schema))
    return target


def _dictionary_columns(schema: pa.Schema) -> list[str]:
    """The columns worth dictionary-encoding: all but floats and lists of floats."""
    def floating(t: pa.DataType) -> bool:
        listed = pa.types.is_list(t) or pa.types.is_fixed_size_list(t)
        return pa.types.is_floating(t) or listed and floating(t.value_type)

    return [f.name for f in schema if not floating(f.type)]
