"""The feature store built once for every test module of tests/feature_store that needs it, and a private
redis-server for the Redis online store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.feature_store.redis_server import NOT_FOUND
from tests.feature_store.redis_server import redis_server as start_redis
from tests.feature_store.store_world import make_world, run, training_set


@pytest.fixture(scope="package")
def built(tiny_world, tmp_path_factory) -> Path:
    """The tiny world with stand-in embeddings, built and turned into training sets through the CLI."""
    data = make_world(tiny_world, tmp_path_factory.mktemp("fs"))
    run("build", data)
    run("training-set", data)
    return data


@pytest.fixture(scope="package")
def ts_frame(built) -> pd.DataFrame:
    return training_set(built)


@pytest.fixture(scope="package")
def redis_server(tmp_path_factory) -> str:
    """A redis-server of its own (tests/feature_store/redis_server.py) for the package: its Feast connection
    string host:port. Skips, saying why, where no redis-server binary exists."""
    if shutil.which("redis-server") is None:
        pytest.skip(NOT_FOUND)
    with start_redis(tmp_path_factory.mktemp("redis")) as connection:
        yield connection
