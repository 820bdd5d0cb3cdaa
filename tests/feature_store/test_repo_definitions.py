"""feature_store/repo/definitions.py (the Feast repository file): view names, table paths and the objects to
register for every embedding version."""

from __future__ import annotations

from pathlib import Path

from feature_store.schema import COUNT_ENTITIES, COUNT_WINDOWS_DAYS
from feature_store.store import load_definitions

definitions = load_definitions()


def test_versions_become_view_name_tags():
    assert definitions.version_tag("dashclip-v1.2") == "dashclip_v1_2"
    names = definitions.view_names("dashclip-v1.2", COUNT_ENTITIES)
    assert names["product_embedding_features"] == "product_embedding_dashclip_v1_2"
    assert names["user_history_features"] == "user_history_dashclip_v1_2"
    assert names["product_attribute_features"] == "product_attributes"
    assert names["ad_count_features"] == "ad_counts"


def test_versioned_tables_sit_under_their_version():
    offline = Path("/d/features/offline")
    assert definitions.table_path(offline, "user_history_features", "v1") == \
        offline / "v1" / "user_history_features" / "part-00000.parquet"
    assert definitions.table_path(offline, "product_rating_features", "v1") == \
        offline / "product_rating_features" / "part-00000.parquet"


def test_objects_cover_every_table_and_version():
    params = {"offline_dir": "/d/features/offline", "count_windows_days": list(COUNT_WINDOWS_DAYS),
              "count_entities": list(COUNT_ENTITIES),
              "versions": {"v1": {"embedding_dim": 8}, "v2": {"embedding_dim": 16}}}
    views = {o.name: o for o in definitions.build_objects(params) if type(o).__name__ == "FeatureView"}
    assert sorted(views) == sorted(
        ["product_attributes", "product_ratings", *(f"{e}_counts" for e in COUNT_ENTITIES),
         *(f"{kind}_{v}" for v in ("v1", "v2") for kind in ("product_embedding", "query_embedding", "user_history"))])
    assert views["product_embedding_v2"].tags["embedding_dim"] == "16"
    assert all(v.ttl.total_seconds() == 0 for v in views.values())  # no TTL: the tables hold every change
    assert [f.name for f in views["user_counts"].features] == [
        "user_impressions_1d", "user_clicks_1d", "user_impressions_7d", "user_clicks_7d"]
