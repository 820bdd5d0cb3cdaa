"""Small valid tables of every declared table, for the schema tests to break one column at a time."""

import datetime as dt
import io

import pyarrow as pa
from PIL import Image

from feature_store.schema import TABLES


def tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    return buf.getvalue()


T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def valid_columns(table_name: str, n: int = 3) -> dict:
    """Plain-Python columns of a small valid table (rows differ in every key)."""
    ids = list(range(1, n + 1))
    ts = [T0 + dt.timedelta(hours=i) for i in range(n)]
    labels = [i % 3 for i in range(n)]
    embedding = [[float(i), 0.5, -1.0, 2.0] for i in range(n)]
    if table_name not in _HANDWRITTEN:
        return _generic_columns(table_name, n)
    return {
        "products": dict(product_id=ids, title=[f"milk {i}" for i in ids], aisle=["dairy"] * n,
                         brand=["acme"] * n, store_id=[7] * n, price=[1.5] * n, image=[tiny_png()] * n,
                         created_ts=ts),
        "queries": dict(query_id=ids, query_text=[f"query {i}" for i in ids]),
        "relevance": dict(query_id=[1] * n, product_id=ids, label=labels, source=["llm"] * n),
        "impressions": dict(impression_id=ids, request_id=ids, ts=ts, user_id=ids, query_id=ids,
                            product_id=ids, ad_id=ids, campaign_id=ids, advertiser_id=ids,
                            position=[1, 2, 3][:n] + [4] * (n - 3), device=["ios"] * n, price=[2.0] * n,
                            discount=[0.0, 0.5, 1.0][:n] + [0.1] * (n - 3), rating=[4.5] * n,
                            rating_count=[10] * n, store_distance_km=[0.3] * n, click=[i % 2 for i in ids],
                            conversion=[0] * n),
        "purchases": dict(user_id=[1] * n, product_id=[1] * n, ts=ts, quantity=[1] * n),
        "impression_truth": dict(impression_id=ids, click_prob=[0.1] * n, true_label=labels),
        "relevance_truth": dict(query_id=[1] * n, product_id=ids, true_label=labels),
        "product_truth": dict(product_id=ids, type_id=ids, type_name=["milk"] * n, aisle_id=[1] * n,
                              ambiguity=["none", "title", "image"][:n] + ["none"] * (n - 3)),
        "query_truth": dict(query_id=ids, intent=["type", "brand_type", "aisle"][:n] + ["broad"] * (n - 3),
                            target=["milk"] * n, weight=[1.0] * n, level=[0] * n),
        "product_embeddings": dict(product_id=ids, embedding=embedding, model_version=["v1"] * n, event_ts=ts),
        "query_embeddings": dict(query_id=ids, embedding=embedding, model_version=["v1"] * n, event_ts=ts),
    }[table_name]


_HANDWRITTEN = {"products", "queries", "relevance", "impressions", "purchases", "impression_truth",
                "relevance_truth", "product_truth", "query_truth", "product_embeddings", "query_embeddings"}


def _generic_columns(table_name: str, n: int) -> dict:
    """Valid columns for the derived tables (feature-store tables, the training set), from their declarations."""
    columns = {}
    for i, col in enumerate(TABLES[table_name].columns):
        t = col.dtype
        if col.allowed is not None:
            values = [sorted(col.allowed)[j % len(col.allowed)] for j in range(n)]
        elif pa.types.is_timestamp(t):
            values = [T0 + dt.timedelta(hours=j) for j in range(n)]
        elif pa.types.is_integer(t):
            values = [j + 1 for j in range(n)]
        elif pa.types.is_floating(t):
            values = [1.0] * n
        elif pa.types.is_string(t):
            values = ["x"] * n
        else:  # embeddings
            values = [[float(j), 0.5, -1.0, 2.0] for j in range(n)]
        columns[col.name] = values
    return columns


def valid_table(table_name: str, n: int = 3, **overrides) -> pa.Table:
    """A valid arrow table with the canonical schema; `overrides` replace columns (arrays or lists)."""
    columns = valid_columns(table_name, n)
    table = pa.table(columns, schema=TABLES[table_name].arrow_schema)
    for name, values in overrides.items():
        if not isinstance(values, (pa.Array, pa.ChunkedArray)):
            values = pa.array(values, type=TABLES[table_name].column(name).dtype)
        table = table.set_column(table.column_names.index(name), name, values)
    return table
