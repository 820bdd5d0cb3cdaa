"""ranking.serving.tf_example: model input columns <-> tf.Example protos, and Arrow tables -> input columns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from tests.helpers.training_sets import numpy_columns

from ranking.serving.tf_example import check_columns, encode_examples, parse_spec, table_to_columns
from ranking.tf_legacy_keras import tf
from ranking.training_set import Embeddings


def test_encode_examples_round_trip_and_errors(inputs, data):
    columns = data["test"].take(np.arange(50)).columns
    assert isinstance(columns["product_embedding"], Embeddings)  # the dedup'd form is accepted as is
    examples = encode_examples(columns, inputs)
    assert len(examples) == 50
    parsed = tf.io.parse_example(examples, parse_spec(inputs))
    for name in inputs:
        assert np.array_equal(parsed[name].numpy(), np.asarray(columns[name][np.arange(50)])), name
    assert encode_examples({k: v[:0] for k, v in columns.items()}, inputs) == []

    with pytest.raises(ValueError, match=r"missing column\(s\) for the model inputs: rating \(float32"):
        encode_examples({k: v for k, v in columns.items() if k != "rating"}, inputs)
    with pytest.raises(ValueError, match="'position': expected int64 ids, got dtype float32"):
        encode_examples({**columns, "position": np.zeros(50, np.float32)}, inputs)
    with pytest.raises(ValueError, match="'history_embedding': expected a float32 embedding of width 16"):
        encode_examples({**columns, "history_embedding": np.zeros((50, 8), np.float32)}, inputs)
    with pytest.raises(ValueError, match="'rating' has 49 rows"):
        encode_examples({**columns, "rating": np.zeros(49, np.float32)}, inputs)


def test_table_to_columns_reads_the_inputs_of_an_arrow_table(inputs, test_table):
    rows = test_table.slice(0, 40)
    columns = table_to_columns(rows, inputs)
    assert set(columns) == set(inputs)
    assert columns["device"].dtype == object and isinstance(columns["device"][0], bytes)
    expected = check_columns(numpy_columns(rows, inputs), inputs)
    for name, values in check_columns(columns, inputs).items():
        np.testing.assert_array_equal(values, expected[name], err_msg=name)

    class Bad(ValueError):
        pass

    nulls = rows.set_column(rows.schema.get_field_index("rating"), "rating", pa.nulls(40, pa.float32()))
    with pytest.raises(Bad, match="column 'rating' has 40 null values"):
        table_to_columns(nulls, inputs, Bad)
