"""The table contracts of the project: every table's columns, arrow dtypes, keys and value rules, in one place.

Every stage (the simulator, DashCLIP training, the feature store, ranking, evaluation) reads and writes tables
through this package, so a user's own catalog, relevance labels or impression logs are checked exactly like the
simulator's output (docs/design.md).

    tables.py             the declarations: Column, TableSchema, TABLES and the shared names (TIMESTAMP, ...)
    validation.py         validate(name, data) -> canonical pa.Table, or SchemaError naming table, column, problem;
                          duplicate_keys(table, keys) for readers that check keys of their own
    parquet_io.py         read_table / write_table / table_columns: parquet files and folders, validated, written
                          atomically; UnreadableTableError for a file that is not parquet
    embedding_columns.py  embedding columns as numpy matrices and back

Every public name is importable from here (`from feature_store.schema import read_table`). Importing the package
loads only pyarrow, numpy and core: no Feast, no pandas (a DataFrame is accepted wherever a table is).
"""

from feature_store.schema.embedding_columns import checked_embedding_matrix, embedding_array, embedding_matrix
from feature_store.schema.parquet_io import UnreadableTableError, read_table, table_columns, write_table
from feature_store.schema.tables import (
    BINARY, COUNT_ENTITIES, COUNT_FEATURES, COUNT_WINDOWS_DAYS, EMBEDDING, IMPRESSION_KEYS, IMPRESSION_LABELS, LABELS,
    PNG_SIGNATURE, TABLES, TIMESTAMP, Column, TableSchema, count_feature_names,
)
from feature_store.schema.validation import SchemaError, duplicate_keys, table_schema, validate

__all__ = [
    "BINARY", "COUNT_ENTITIES", "COUNT_FEATURES", "COUNT_WINDOWS_DAYS", "EMBEDDING", "IMPRESSION_KEYS",
    "IMPRESSION_LABELS", "LABELS", "PNG_SIGNATURE", "TABLES", "TIMESTAMP", "Column", "SchemaError", "TableSchema",
    "checked_embedding_matrix", "count_feature_names", "duplicate_keys", "embedding_array", "embedding_matrix", "read_table",
    "table_columns", "table_schema", "UnreadableTableError", "validate", "write_table",
]
