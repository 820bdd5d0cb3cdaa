"""feature_store.schema.validation: valid tables pass with canonical dtypes; each kind of bad input names table,
column and problem; only lossless normalisations are applied."""

import datetime as dt
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from feature_store.schema import EMBEDDING, TABLES, TIMESTAMP, SchemaError, validate
from tests.feature_store.schema.valid_tables import T0, tiny_png, valid_columns, valid_table


def raises(table_name, data, column, match, **kwargs) -> SchemaError:
    with pytest.raises(SchemaError, match=match) as info:
        validate(table_name, data, **kwargs)
    err = info.value
    assert err.table == table_name and err.column == column, str(err)
    assert f"table '{table_name}'" in str(err) and f"column '{column}'" in str(err)
    return err


# ---------------------------------------------------------------------------------------------------------------
# Valid tables


@pytest.mark.parametrize("table_name", sorted(TABLES))
def test_valid_tables_pass_with_canonical_dtypes(table_name):
    schema = TABLES[table_name]
    out = validate(table_name, valid_table(table_name))
    assert out.schema == schema.arrow_schema
    assert out.num_rows == 3
    assert out.schema.metadata is None


def test_pandas_dataframe_is_accepted():
    df = valid_table("products").to_pandas()
    out = validate("products", df)
    assert out.schema == TABLES["products"].arrow_schema
    assert out.equals(valid_table("products"))


def test_empty_table_is_valid():
    out = validate("impressions", valid_table("impressions").slice(0, 0))
    assert out.num_rows == 0


# ---------------------------------------------------------------------------------------------------------------
# Bad input: each error names the table, the column and the problem


def test_unknown_table():
    with pytest.raises(SchemaError, match=r"table 'prodcuts'.*unknown table.*products") as info:
        validate("prodcuts", valid_table("products"))
    assert info.value.column is None


def test_missing_column():
    raises("queries", valid_table("queries").drop_columns(["query_text"]), "query_text", "missing column")


@pytest.mark.parametrize("kept", [["product_id", "title"], ["product_id", "image"],
                                  ["product_id", "title", "brand", "price"]], ids=["text", "image", "some-attributes"])
def test_a_catalog_needs_only_what_its_modalities_use(kept):
    out = validate("products", valid_table("products").select(kept))
    assert out.column_names == [n for n in TABLES["products"].names if n in kept]  # absent optional columns stay absent
    assert out.schema.field("product_id").type == pa.int64()
    assert validate("relevance", valid_table("relevance").drop_columns(["source"])).column_names == [
        "query_id", "product_id", "label"]


def test_a_catalog_without_title_and_image_is_named():
    err = raises("products", valid_table("products").select(["product_id", "aisle"]), "title",
                 "needs at least one of title, image .the table has: product_id, aisle")
    assert TABLES["products"].required == ("product_id",) and TABLES["products"].one_of == ("title", "image")
    raises("relevance", valid_table("relevance").drop_columns(["label"]), "label", "missing column")
    assert "source" not in TABLES["relevance"].required
    del err


def test_optional_columns_that_are_there_follow_the_rules():
    raises("products", valid_table("products").select(["product_id", "title", "image"]).set_column(
        2, "image", pa.array([b"GIF89a", tiny_png(), tiny_png()])), "image", "signature")
    raises("products", valid_table("products", price=[1.0, -1.0, 2.0]).select(["product_id", "title", "price"]),
           "price", "below the minimum")


def test_source_is_in_the_message():
    err = raises("queries", valid_table("queries").drop_columns(["query_text"]), "query_text",
                 r"\(data/demo/raw/queries\)", source="data/demo/raw/queries")
    assert err.source == "data/demo/raw/queries"


def test_string_ids_are_a_dtype_error():
    table = valid_table("queries", query_id=pa.array(["1", "2", "3"]))
    raises("queries", table, "query_id", r"dtype string, expected int64")


def test_float_ids_are_a_dtype_error():
    table = valid_table("queries", query_id=pa.array([1.0, 2.0, 3.0]))
    raises("queries", table, "query_id", r"dtype double, expected int64")


def test_int_where_string_expected_is_a_dtype_error():
    table = valid_table("queries", query_text=pa.array([1, 2, 3]))
    raises("queries", table, "query_text", r"dtype int64, expected string")


def test_int64_not_fitting_int8():
    table = valid_table("relevance", label=pa.array([0, 1, 300], pa.int64()))
    raises("relevance", table, "label", r"1 values do not fit int8.*e\.g\. 300")


def test_int64_fitting_int8_is_narrowed():
    out = validate("relevance", valid_table("relevance", label=pa.array([0, 1, 2], pa.int64())))
    assert out.schema.field("label").type == pa.int8()
    assert out.column("label").to_pylist() == [0, 1, 2]


def test_tz_naive_timestamp():
    naive = pa.array([dt.datetime(2024, 1, 1)] * 3, pa.timestamp("us"))
    raises("products", valid_table("products", created_ts=naive), "created_ts", "UTC time zone is required")


def test_timestamp_losing_precision():
    ns = pa.array([1_000_000_001] * 3, pa.timestamp("ns", tz="UTC"))
    raises("products", valid_table("products", created_ts=ns), "created_ts", "sub-microsecond")


def test_null_key():
    table = valid_table("queries", query_id=[1, None, 3])
    raises("queries", table, "query_id", "1 null key values")


def test_null_in_non_nullable_column():
    table = valid_table("products", aisle=["dairy", None, None])
    raises("products", table, "aisle", "2 null values")


def test_nan_in_float_column():
    table = valid_table("impressions", rating=[4.0, float("nan"), 3.0])
    raises("impressions", table, "rating", "1 NaN values")


def test_duplicate_single_key():
    table = valid_table("queries", query_id=[1, 2, 2])
    raises("queries", table, "query_id", r"1 duplicate keys \(e\.g\. query_id=2 appears 2 times\)")


def test_duplicate_composite_key():
    table = valid_table("relevance", product_id=[5, 5, 6])
    err = raises("relevance", table, "query_id, product_id",
                 r"1 duplicate keys \(e\.g\. query_id=1, product_id=5 appears 2 times\)")
    assert err.problem.startswith("1 duplicate keys")


def test_same_product_in_different_queries_is_not_a_duplicate():
    validate("relevance", valid_table("relevance", query_id=[1, 2, 3], product_id=[5, 5, 5]))


def test_label_outside_allowed_set():
    table = valid_table("relevance", label=[0, 3, 1])
    err = raises("relevance", table, "label", r"1 values outside \{0, 1, 2\} \(e\.g\. 3\)",
                 source="data/demo/raw/relevance")
    assert str(err) == ("table 'relevance' (data/demo/raw/relevance): column 'label': "
                        "1 values outside {0, 1, 2} (e.g. 3)")


def test_click_outside_allowed_set():
    raises("impressions", valid_table("impressions", click=[0, 2, 1]), "click", r"outside \{0, 1\} \(e\.g\. 2\)")


def test_string_outside_allowed_set():
    table = valid_table("product_truth", ambiguity=["none", "smell", "title"])
    raises("product_truth", table, "ambiguity", r"1 values outside .* \(e\.g\. 'smell'\)")


def test_negative_price():
    raises("products", valid_table("products", price=[1.0, -2.5, 3.0]), "price",
           r"1 values below the minimum 0\.0 \(e\.g\. -2\.5\)")


def test_value_above_maximum():
    raises("impressions", valid_table("impressions", discount=[0.0, 1.5, 0.2]), "discount",
           r"1 values above the maximum 1\.0 \(e\.g\. 1\.5\)")


def test_position_below_one():
    raises("impressions", valid_table("impressions", position=[0, 1, 2]), "position", "below the minimum 1")


def test_empty_title():
    raises("products", valid_table("products", title=["milk", "", "eggs"]), "title", "1 empty values")


def test_blank_query_text():
    raises("queries", valid_table("queries", query_text=["milk", "   ", "eggs"]), "query_text",
           r"1 empty values \(after stripping whitespace\)")


def test_bad_png_bytes():
    table = valid_table("products", image=[tiny_png(), b"GIF89a....", tiny_png()])
    raises("products", table, "image", r"1 values do not start with the signature.*GIF89a")


def test_empty_image_bytes():
    raises("products", valid_table("products", image=[tiny_png(), b"", tiny_png()]), "image", "1 empty values")


def test_embedding_rows_of_different_lengths():
    table = valid_table("product_embeddings", embedding=[[0.0, 1.0], [0.0, 1.0], [0.0, 1.0, 2.0]])
    raises("product_embeddings", table, "embedding", r"different lengths.*common length 2.*length 3")


def test_embedding_dim_mismatch():
    table = valid_table("query_embeddings")  # length 4
    raises("query_embeddings", table, "embedding", r"expected embedding_dim 8, got length 4 in 3 rows",
           embedding_dim=8)
    assert validate("query_embeddings", table, embedding_dim=4).num_rows == 3


def test_nan_in_embedding():
    table = valid_table("query_embeddings", embedding=[[0.0, 1.0], [np.nan, 1.0], [0.0, 1.0]])
    raises("query_embeddings", table, "embedding", "1 NaN embedding components")


def test_error_pickles():
    err = SchemaError("queries", "query_id", "1 null key values", "x/y")
    back = pickle.loads(pickle.dumps(err))
    assert (back.table, back.column, back.problem, back.source, str(back)) == (
        err.table, err.column, err.problem, err.source, str(err))


# ---------------------------------------------------------------------------------------------------------------
# Allowed normalisations


def test_int32_ids_become_int64():
    out = validate("queries", valid_table("queries", query_id=pa.array([1, 2, 3], pa.int32())))
    assert out.schema.field("query_id").type == pa.int64()
    assert out.column("query_id").to_pylist() == [1, 2, 3]


def test_float64_price_becomes_float32():
    out = validate("products", valid_table("products", price=pa.array([1.25, 2.5, 3.0], pa.float64())))
    assert out.schema.field("price").type == pa.float32()
    assert out.column("price").to_pylist() == [1.25, 2.5, 3.0]


def test_float64_overflowing_float32_is_an_error():
    table = valid_table("products", price=pa.array([1.0, 1e39, 3.0], pa.float64()))
    raises("products", table, "price", "1 values overflow float")


def test_ms_timestamps_become_us():
    ms = pa.array([T0 + dt.timedelta(milliseconds=i) for i in range(3)], pa.timestamp("ms", tz="UTC"))
    out = validate("products", valid_table("products", created_ts=ms))
    assert out.schema.field("created_ts").type == TIMESTAMP
    assert out.column("created_ts").to_pylist() == ms.to_pylist()


def test_berlin_time_becomes_utc_with_the_same_instant():
    berlin = pd.Series(pd.to_datetime(["2024-03-31 01:30", "2024-07-01 12:00", "2024-12-24 18:00"]))
    berlin = berlin.dt.tz_localize("Europe/Berlin")
    df = valid_table("products").to_pandas()
    df["created_ts"] = berlin
    out = validate("products", df)
    assert out.schema.field("created_ts").type == TIMESTAMP
    got = out.column("created_ts").to_pandas()
    assert (got == berlin.dt.tz_convert("UTC")).all()
    assert got[1] == pd.Timestamp("2024-07-01 10:00", tz="UTC")


def test_large_string_binary_and_embedding_variants_are_normalised():
    products = valid_table("products", title=pa.array(["a", "b", "c"], pa.large_string()),
                           image=pa.array([tiny_png()] * 3, pa.large_binary()))
    assert validate("products", products).schema == TABLES["products"].arrow_schema
    for kind in (pa.list_(pa.float32(), 4), pa.large_list(pa.float32()), pa.list_(pa.float64())):
        emb = pa.array(valid_columns("product_embeddings")["embedding"], kind)
        out = validate("product_embeddings", valid_table("product_embeddings", embedding=emb))
        assert out.schema.field("embedding").type == EMBEDDING
        assert out.column("embedding").to_pylist() == valid_columns("product_embeddings")["embedding"]


def test_extra_columns_are_kept_after_schema_columns():
    table = valid_table("queries").append_column("lang", pa.array(["en", "de", "fr"]))
    table = table.select(["lang", "query_text", "query_id"])  # any input order
    out = validate("queries", table)
    assert out.column_names == ["query_id", "query_text", "lang"]
    assert out.column("lang").to_pylist() == ["en", "de", "fr"]


def test_record_batches_and_dictionary_strings_are_accepted():
    table = valid_table("queries")
    batch = table.to_batches()[0]
    assert validate("queries", batch).equals(table)
    encoded = table.set_column(1, "query_text", table.column("query_text").dictionary_encode())
    out = validate("queries", encoded)
    assert out.schema == TABLES["queries"].arrow_schema and out.equals(table)


def test_anything_but_a_table_or_a_dataframe_is_a_type_error():
    with pytest.raises(TypeError, match=r"table 'queries': expected a pyarrow Table or pandas DataFrame, got dict"):
        validate("queries", {"query_id": [1], "query_text": ["milk"]})
