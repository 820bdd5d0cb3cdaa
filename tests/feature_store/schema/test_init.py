"""feature_store.schema (the package): every public name importable from it, and importing it stays light."""

import json
import subprocess
import sys

import feature_store.schema
from feature_store.schema import embedding_columns, parquet_io, tables, validation
from tests.conftest import ROOT


def test_public_names_are_reexported_from_the_modules_that_define_them():
    homes = {
        tables: ["BINARY", "COUNT_ENTITIES", "COUNT_FEATURES", "COUNT_WINDOWS_DAYS", "EMBEDDING", "IMPRESSION_KEYS",
                 "IMPRESSION_LABELS", "LABELS", "PNG_SIGNATURE", "TABLES", "TIMESTAMP", "Column", "TableSchema",
                 "count_feature_names"],
        validation: ["SchemaError", "duplicate_keys", "table_schema", "validate"],
        parquet_io: ["UnreadableTableError", "read_table", "table_columns", "write_table"],
        embedding_columns: ["checked_embedding_matrix", "embedding_array", "embedding_matrix"],
    }
    assert sorted(feature_store.schema.__all__) == sorted(n for names in homes.values() for n in names)
    for module, names in homes.items():
        for name in names:
            assert getattr(feature_store.schema, name) is getattr(module, name), name
    assert callable(feature_store.schema.validate)  # the function, not the validation module


def test_importing_the_schema_loads_no_feast_pandas_or_deep_learning_framework():
    probe = ("import json, sys, feature_store.schema; "
             "print(json.dumps(sorted(m for m in ('feast', 'pandas', 'tensorflow', 'torch', 'faiss', 'duckdb') "
             "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
