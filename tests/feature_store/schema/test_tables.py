"""feature_store.schema.tables: the declared tables, their keys, and the names the count features share."""

import pyarrow as pa
import pytest

from feature_store.schema import (
    COUNT_ENTITIES, COUNT_FEATURES, COUNT_WINDOWS_DAYS, EMBEDDING, IMPRESSION_KEYS, IMPRESSION_LABELS, TABLES,
    TIMESTAMP, count_feature_names,
)


def test_declared_tables():
    assert set(TABLES) == {
        "products", "queries", "relevance", "impressions", "purchases", "impression_truth", "relevance_truth",
        "retrieval_truth", "product_truth", "query_truth", "product_embeddings", "query_embeddings",
        # the feature store's tables and the training-set contract
        "product_embedding_features", "query_embedding_features", "user_history_features",
        "product_attribute_features", "product_rating_features", "product_count_features", "query_count_features",
        "ad_count_features", "user_count_features", "training_set",
        # an online experiment's log (experiments/ab_simulate.py writes it, experiments/ab reads it)
        "experiment_log"}
    assert TABLES["relevance"].keys == ("query_id", "product_id")
    assert TABLES["purchases"].keys == ("user_id", "product_id", "ts")
    assert {n for n, t in TABLES.items() if t.hidden} == {
        "impression_truth", "relevance_truth", "retrieval_truth", "product_truth", "query_truth"}
    assert TABLES["products"].column("created_ts").dtype == TIMESTAMP
    assert TABLES["query_embeddings"].column("embedding").dtype == EMBEDDING
    with pytest.raises(KeyError, match="no column 'nope'"):
        TABLES["products"].column("nope")


def test_every_table_is_declared_under_its_own_name_with_unique_columns():
    for name, table in TABLES.items():
        assert table.name == name
        assert len(set(table.names)) == len(table.names), name
        assert table.keys and all(table.column(k).key for k in table.keys), name


def test_arrow_schema_follows_the_columns_and_leaves_nulls_to_validation():
    table = TABLES["impressions"]
    schema = table.arrow_schema
    assert schema.names == list(table.names)
    assert [f.type for f in schema] == [c.dtype for c in table.columns]
    assert all(f.nullable for f in schema)  # nullability is a validation rule, not an arrow one
    assert pa.table({n: pa.array([], t) for n, t in zip(schema.names, schema.types)}).schema == schema


def test_count_feature_names_cover_every_entity_and_window():
    assert COUNT_WINDOWS_DAYS == (1, 7)
    assert count_feature_names("ad") == ("ad_impressions_1d", "ad_clicks_1d", "ad_impressions_7d", "ad_clicks_7d")
    assert COUNT_FEATURES == tuple(n for e in COUNT_ENTITIES for n in count_feature_names(e))
    for entity in COUNT_ENTITIES:
        table = TABLES[f"{entity}_count_features"]
        assert table.keys == (f"{entity}_id", "event_ts")
        assert table.names[2:] == count_feature_names(entity)


def test_training_set_carries_the_impression_ids_labels_and_every_count():
    names = TABLES["training_set"].names
    assert names[:len(IMPRESSION_KEYS)] == tuple(c.name for c in IMPRESSION_KEYS)
    assert names[-len(IMPRESSION_LABELS):] == ("click", "conversion")
    assert set(COUNT_FEATURES) <= set(names)
    assert TABLES["training_set"].keys == ("impression_id",)
