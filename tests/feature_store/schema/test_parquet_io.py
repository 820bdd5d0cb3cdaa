"""feature_store.schema.parquet_io: parquet parts written atomically and byte-deterministically, read back and
validated."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store.schema import SchemaError, read_table, table_columns, write_table
from tests.feature_store.schema.valid_tables import valid_table


def test_write_read_round_trip_two_parts(tmp_path):
    folder = tmp_path / "raw" / "impressions"
    full = valid_table("impressions", n=6)
    assert write_table("impressions", full.slice(0, 4), folder, part=0) == folder / "part-00000.parquet"
    write_table("impressions", full.slice(4), folder, part=1)
    assert sorted(p.name for p in folder.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    back = read_table("impressions", folder)
    assert back.equals(full)
    single = read_table("impressions", folder / "part-00001.parquet")
    assert single.equals(full.slice(4))


def test_read_selected_columns(tmp_path):
    folder = tmp_path / "relevance"
    write_table("relevance", valid_table("relevance"), folder)
    out = read_table("relevance", folder, columns=["label"])
    assert out.column_names == ["query_id", "product_id", "label"]
    with pytest.raises(SchemaError, match="missing column") as info:
        read_table("relevance", folder, columns=["label", "labeler"])
    assert info.value.column == "labeler"
    pq.write_table(valid_table("relevance").drop_columns(["source"]), tmp_path / "no_source.parquet")
    assert read_table("relevance", tmp_path / "no_source.parquet", columns=["label"]).num_rows == 3
    with pytest.raises(SchemaError, match="missing column") as info:
        read_table("relevance", tmp_path / "no_source.parquet", columns=["source"])
    assert info.value.column == "source"


def test_optional_columns_are_read_where_the_table_has_them(tmp_path):
    folder = tmp_path / "products"
    write_table("products", valid_table("products").select(["product_id", "title"]), folder)
    assert table_columns("products", folder) == ("product_id", "title")
    assert read_table("products", folder).column_names == ["product_id", "title"]
    out = read_table("products", folder, columns=["title"], if_present=["aisle", "created_ts"])
    assert out.column_names == ["product_id", "title"]
    with pytest.raises(SchemaError, match="column 'image': missing column .optional in the contract, but this "
                                          "reader needs it. .the table has: product_id, title") as info:
        read_table("products", folder, columns=["image"])
    assert (info.value.table, info.value.column) == ("products", "image")
    full = tmp_path / "full"
    write_table("products", valid_table("products"), full)
    assert read_table("products", full, columns=["title"], if_present=["aisle"]).column_names == [
        "product_id", "title", "aisle"]


def test_read_validates_the_files(tmp_path):
    folder = tmp_path / "relevance"
    folder.mkdir()
    pq.write_table(valid_table("relevance").set_column(2, "label", pa.array([0, 5, 1], pa.int8())),
                   folder / "part-00000.parquet")
    with pytest.raises(SchemaError, match=r"column 'label': 1 values outside") as info:
        read_table("relevance", folder)
    assert info.value.source == str(folder)


def test_write_is_byte_deterministic(tmp_path):
    table = valid_table("products", n=5)
    a = write_table("products", table, tmp_path / "a").read_bytes()
    b = write_table("products", table.to_pandas(), tmp_path / "b").read_bytes()
    assert a == b
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temp files left


def test_float_and_embedding_columns_are_written_without_a_dictionary(tmp_path):
    table = valid_table("product_embeddings", n=5)
    path = write_table("product_embeddings", table, tmp_path)
    row_group = pq.ParquetFile(path).metadata.row_group(0)
    encodings = {row_group.column(i).path_in_schema: row_group.column(i).encodings
                 for i in range(row_group.num_columns)}
    assert not any("DICTIONARY" in e for e in encodings["embedding.list.element"])
    assert any("DICTIONARY" in e for e in encodings["model_version"])  # strings still get one
    assert read_table("product_embeddings", tmp_path).column("embedding").to_pylist() == \
        table.column("embedding").to_pylist()


def test_write_rejects_invalid_data(tmp_path):
    with pytest.raises(SchemaError, match="label"):
        write_table("relevance", valid_table("relevance", label=[0, 1, 9]), tmp_path / "relevance")
    assert not (tmp_path / "relevance" / "part-00000.parquet").exists()


def test_read_missing_folder(tmp_path):
    missing = tmp_path / "nowhere" / "products"
    with pytest.raises(FileNotFoundError, match=r"products.*nowhere"):
        read_table("products", missing)
