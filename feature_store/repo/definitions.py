"""The Feast definitions of the feature store: entities, sources and feature views. Only definitions live here.

`build_objects(params)` returns every object to register. `python -m feature_store build` renders a repository per
data directory (data/<name>/features/repo/: feature_store.yaml, this file, params.json) and applies these objects,
so `feast -c data/<name>/features/repo plan|apply|materialize` works on it too: when Feast imports this file there,
it reads params.json beside it and exposes the objects as module attributes. Imports only the standard library
and Feast, so the Feast CLI can load it from any directory.

Feature views (one parquet table each, written by feature_store.derive; key + `event_ts` + features):
    product_embedding_<ver>   product_id  product_embedding            from the vector's availability time
    query_embedding_<ver>     query_id    query_embedding
    user_history_<ver>        user_id     history_embedding, history_count   purchases in (t - 84 days, t)
    product_attributes        product_id  aisle, brand, store_id, price, created_us
    product_ratings           product_id  rating, rating_count          last shown strictly before t
    <entity>_counts           <entity>_id <entity>_<impressions|clicks>_<w>d, entity in product/query/ad/user
`<ver>` is the embedding version with characters outside [A-Za-z0-9_] replaced by '_'.

No TTL anywhere (ttl=0): every table holds a row at each instant its value changes, including the rows that
return a value to zero (a purchase leaving the 84-day window, a count window emptying). Feast's point-in-time join
(latest event_ts <= t) and the online store (latest materialized row) then give exact values, and nothing depends
on Feast's online TTL check, which compares with the wall clock rather than the request time.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Int32, Int64, String

ENTITY_KEYS = {"product": "product_id", "query": "query_id", "ad": "ad_id", "user": "user_id"}


def version_tag(version: str) -> str:
    """The embedding version as it appears in feature-view names."""
    return re.sub(r"[^A-Za-z0-9_]", "_", version)


def view_names(version: str, count_entities=tuple(ENTITY_KEYS)) -> dict[str, str]:
    """Feature-view name of each feature table (versioned tables carry the version tag)."""
    tag = version_tag(version)
    names = {
        "product_embedding_features": f"product_embedding_{tag}",
        "query_embedding_features": f"query_embedding_{tag}",
        "user_history_features": f"user_history_{tag}",
        "product_attribute_features": "product_attributes",
        "product_rating_features": "product_ratings",
    }
    names.update({f"{e}_count_features": f"{e}_counts" for e in count_entities})
    return names


VERSIONED_TABLES = ("product_embedding_features", "query_embedding_features", "user_history_features")


def table_path(offline_dir: str | Path, table: str, version: str | None = None) -> Path:
    """The one parquet file of a feature table (versioned tables sit under the version's folder)."""
    base = Path(offline_dir) / version if table in VERSIONED_TABLES else Path(offline_dir)
    return base / table / "part-00000.parquet"


def _source(params: dict, table: str, version: str | None):
    """A batch source for the feature table, of the kind the configured offline store reads."""
    name = f"{table}_{version_tag(version)}" if table in VERSIONED_TABLES else table
    path = str(table_path(params["offline_dir"], table, version))
    kind = params.get("offline_store", "duckdb")
    if kind == "spark":  # the same parquet files, read by Spark (they must be on a path the cluster sees)
        # only with this offline store: it needs the feast[spark] extra (pyspark), which the default does not
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import SparkSource

        return SparkSource(name=name, path=path, file_format="parquet", timestamp_field="event_ts")
    if kind == "bigquery":  # tables loaded into a dataset (bq load), one per feature table
        from feast import BigQuerySource  # only with this offline store (the feast[gcp] extra)

        return BigQuerySource(name=name, table=f"{params['bigquery_dataset']}.{name}", timestamp_field="event_ts")
    return FileSource(name=name, path=path, timestamp_field="event_ts")


def build_objects(params: dict) -> list:
    """Entities, sources and feature views for the common tables and every registered embedding version."""
    entities = {e: Entity(name=e, join_keys=[k], value_type=ValueType.INT64, description=f"{e} ({k})")
                for e, k in ENTITY_KEYS.items()}
    windows = params["count_windows_days"]
    count_entities = params["count_entities"]
    objects: list = list(entities.values())

    def view(table: str, entity: str, fields: list, version: str | None = None, tags: dict | None = None):
        source = _source(params, table, version)
        fv = FeatureView(
            name=view_names(version or "", count_entities)[table], entities=[entities[entity]],
            ttl=timedelta(0), schema=[Field(name=ENTITY_KEYS[entity], dtype=Int64), *fields], source=source,
            online=True, tags={"table": table, **(tags or {})},
        )
        objects.extend([source, fv])

    view("product_attribute_features", "product", [
        Field(name="aisle", dtype=String), Field(name="brand", dtype=String), Field(name="store_id", dtype=Int64),
        Field(name="price", dtype=Float32), Field(name="created_us", dtype=Int64)])
    view("product_rating_features", "product", [
        Field(name="rating", dtype=Float32), Field(name="rating_count", dtype=Int32)])
    for e in count_entities:
        view(f"{e}_count_features", e, [Field(name=f"{e}_{kind}_{w}d", dtype=Float32)
                                        for w in windows for kind in ("impressions", "clicks")])
    for version, info in sorted(params["versions"].items()):
        tags = {"embedding_version": version, "embedding_dim": str(info["embedding_dim"])}
        view("product_embedding_features", "product", [Field(name="product_embedding", dtype=Array(Float32))],
             version, tags)
        view("query_embedding_features", "query", [Field(name="query_embedding", dtype=Array(Float32))],
             version, tags)
        view("user_history_features", "user", [Field(name="history_embedding", dtype=Array(Float32)),
                                                Field(name="history_count", dtype=Float32)], version, tags)
    return objects


# Inside a rendered repository, expose the objects as module attributes for the Feast CLI.
_PARAMS = Path(__file__).with_name("params.json")
if _PARAMS.exists():
    for _obj in build_objects(json.loads(_PARAMS.read_text())):
        globals()[f"{type(_obj).__name__.lower()}_{re.sub(r'[^A-Za-z0-9_]', '_', _obj.name)}"] = _obj
