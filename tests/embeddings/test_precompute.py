"""DashCLIP precompute's tables: the embedding dimension is part of the contract (the whole precompute runs in
test_pipeline.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from feature_store.schema import SchemaError, read_table, write_table


def test_embedding_table_of_the_wrong_dimension_is_refused(tmp_path):
    table = pa.table({"product_id": [1, 2], "embedding": [[0.6, 0.8], [1.0, 0.0]], "model_version": ["v", "v"],
                      "event_ts": pa.array([0, 0], pa.timestamp("us", tz="UTC"))})
    write_table("product_embeddings", table, tmp_path, embedding_dim=2)
    with pytest.raises(SchemaError, match="embedding.*expected embedding_dim 16"):
        read_table("product_embeddings", tmp_path, embedding_dim=16)
