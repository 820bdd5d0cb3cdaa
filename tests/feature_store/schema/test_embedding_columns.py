"""feature_store.schema.embedding_columns: embedding columns to numpy matrices and back, bit for bit, with errors
that name the column and the problem."""

import numpy as np
import pyarrow as pa
import pytest

from feature_store.schema import EMBEDDING, checked_embedding_matrix, embedding_array, embedding_matrix


def test_embedding_array_and_matrix_round_trip_bit_for_bit():
    vectors = np.array([[0.1, -3.5e-8, np.inf], [1e38, 0.0, -0.0]], np.float32)
    column = embedding_array(vectors)
    assert column.type == EMBEDDING and column.null_count == 0
    assert column.to_pylist() == [[float(v) for v in row] for row in vectors]
    back = embedding_matrix(column)
    assert back.dtype == np.float32 and np.array_equal(back.view(np.uint32), vectors.view(np.uint32))
    chunked = pa.chunked_array([column.slice(0, 1), column.slice(1)])
    assert np.array_equal(embedding_matrix(chunked).view(np.uint32), vectors.view(np.uint32))
    assert embedding_array(vectors.astype(np.float64)).to_pylist() == column.to_pylist()  # cast to float32 first


def test_embedding_array_marks_null_rows_and_keeps_the_others():
    vectors = np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 4.0]], np.float32)
    column = embedding_array(vectors, null_rows=np.array([False, True, False]))
    assert column.to_pylist() == [[1.0, 2.0], None, [3.0, 4.0]]


def test_empty_matrices_keep_their_width():
    assert embedding_array(np.zeros((0, 4), np.float32)).to_pylist() == []
    assert embedding_matrix(pa.array([], EMBEDDING), 4).shape == (0, 4)
    assert embedding_matrix(pa.array([], EMBEDDING)).shape == (0, 0)


def test_checked_embedding_matrix_names_the_column_and_the_problem():
    class MyError(ValueError):
        pass

    rows = [[0.5, 0.25], [1.0, -1.0]]
    for column in (pa.array(rows, pa.list_(pa.float32())), pa.array(rows, pa.list_(pa.float64(), 2)),
                   pa.chunked_array([pa.array(rows[:1]), pa.array(rows[1:])])):
        values = checked_embedding_matrix(column, "product_embedding", 2)
        assert values.dtype == np.float32 and values.tolist() == rows
    with pytest.raises(MyError, match=r"^f.parquet: embedding column 'e' has 1 null rows"):
        checked_embedding_matrix(pa.array([[1.0, 0.0], None]), "e", 2, "f.parquet: ", MyError)
    with pytest.raises(ValueError, match=r"column 'e' should have width 2 but 1 of 3 rows .*\(e\.g\. 3, row 1\)"):
        checked_embedding_matrix(pa.array([[1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0]]), "e", 2)
    with pytest.raises(ValueError, match="should have width 4 but 2 of 2 rows"):
        checked_embedding_matrix(pa.array(rows, pa.list_(pa.float32(), 2)), "e", 4)
    with pytest.raises(ValueError, match="column 'e' has NaN components"):
        checked_embedding_matrix(pa.array([[1.0, float("nan")]]), "e", 2)
