"""The Redis online store (online_store=redis): the tiny world materialized into a real redis-server serves the same
online features as the SQLite store, bit for bit, and both equal the training set's point-in-time rows; the direct
readers of both stores return exactly what Feast's own online_read returns; config errors name the key."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import redis
import yaml

from core.config import ConfigError
from feature_store.config import FeatureStoreConfig
from feature_store.features import ENTITY_KEYS, ONLINE_COLUMNS
from feature_store.online import FeastValues, OnlineFeatures, RedisValues, SqliteValues, _entity_key_bytes
from tests.feature_store.store_world import VERSION, make_world, request_context, run


def test_redis_and_sqlite_serve_the_training_features(redis_server, built, ts_frame, tiny_world, tmp_path):
    redis_keys = ("online_store=redis", f"redis_connection={redis_server}")
    data = make_world(tiny_world, tmp_path)  # the same raw tables and stand-in embeddings as `built`
    run("build", data, *redis_keys)
    rendered = yaml.safe_load((data / "features" / "repo" / "feature_store.yaml").read_text())
    assert rendered["online_store"] == {"type": "redis", "connection_string": redis_server}
    run("materialize", data, *redis_keys)  # up to the data's end: the rewrite below must drop the later rows

    world = json.loads((built / "world.json").read_text())
    start, end = (pd.Timestamp(x) for x in world["splits"]["test"])
    in_split = ts_frame[(ts_frame.ts >= start + 0.5 * (end - start)) & (ts_frame.ts < end)]
    rows = ts_frame[ts_frame.request_id == in_split.request_id.iloc[0]]
    at = rows.ts.iloc[0]
    run("materialize", built, f"materialize_end={at.isoformat()}")
    run("materialize", data, *redis_keys, f"materialize_end={at.isoformat()}")
    assert not (data / "features" / "online.db").exists()  # the rows went to Redis

    request = (int(rows.user_id.iloc[0]), int(rows.query_id.iloc[0]), rows.product_id.tolist(), request_context(rows))
    stores = {"sqlite": OnlineFeatures(built, VERSION), "redis": OnlineFeatures(data, VERSION)}
    assert isinstance(stores["sqlite"].values, SqliteValues) and isinstance(stores["redis"].values, RedisValues)
    got = {name: online.get(*request, ad_ids=rows.ad_id.tolist()) for name, online in stores.items()}
    for name in ONLINE_COLUMNS:
        want = rows[name].to_numpy()
        if name.endswith("_embedding"):
            want = np.stack(want).view(np.uint32)  # to the bit
            assert np.array_equal(got["redis"][name].view(np.uint32), want), name
            assert np.array_equal(got["sqlite"][name].view(np.uint32), want), name
        else:
            assert np.array_equal(got["redis"][name], want), (name, got["redis"][name], want)
            assert np.array_equal(got["sqlite"][name], want), (name, got["sqlite"][name], want)

    # The direct readers against Feast's online_read, on known and unknown entities (10**9: none stored).
    # Absent is None or b"" (Feast's Redis read gives an empty value for an unknown entity): both decode to null.
    ids = {k: sorted({int(v) for v in rows[k]} | {10**9}) for k in ENTITY_KEYS}
    for name, online in stores.items():
        reference = FeastValues(online.store, online.repo.views).read(ids)
        direct = online.values.read(ids)
        assert {f: [v or None for v in vs] for f, vs in direct.items()} == \
               {f: [v or None for v in vs] for f, vs in reference.items()}, name
        assert all(values[0] for values in direct.values()), name  # known entities: every feature present
        assert not any(values[-1] for values in direct.values()), name  # the unknown id reads as absent

    # The pipelined HMGETs share pooled connections: a read that fails midway (a key of another type answers
    # WRONGTYPE) drops its connection, so the replies it left unread never reach the next read.
    reader = stores["redis"].values
    client = redis.Redis(connection_pool=reader._pool)
    config = stores["redis"].store.config
    stray = _entity_key_bytes(config.entity_key_serialization_version, config.project.encode())("product_id", 7 * 10**9)
    before = reader.read(ids)
    client.set(stray, b"not a hash")
    try:
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            reader.read({**ids, "product_id": [*ids["product_id"][:1], 7 * 10**9, *ids["product_id"][1:]]})
        assert reader.read(ids) == before
    finally:
        client.delete(stray)


def test_online_store_config_errors_name_the_key(built, tmp_path):
    with pytest.raises(ConfigError, match="'online_store' must be one of sqlite, redis, got 'memcached'"):
        FeatureStoreConfig(online_store="memcached").validate()
    with pytest.raises(ConfigError, match="'redis_connection' is empty"):
        FeatureStoreConfig(online_store="redis", redis_connection=" ").validate()
    template = tmp_path / "feature_store.yaml"  # a template of its own, with its own online_store section
    template.write_text("project: ${PROJECT}\nprovider: local\nonline_store:\n  type: sqlite\n  path: x.db\n")
    before = (built / "features" / "repo" / "feature_store.yaml").read_text()
    with pytest.raises(ConfigError, match=r"'online_store'.*needs the line 'online_store: \$\{ONLINE_STORE\}'"):
        run("build", built, "online_store=redis", f"repo_template={template}")
    assert (built / "features" / "repo" / "feature_store.yaml").read_text() == before  # stopped before any work
    with pytest.raises(ConfigError, match=r"'online_store' is 'redis', but .* built with the 'sqlite' online store"):
        run("materialize", built, "online_store=redis")  # the key is read by build
