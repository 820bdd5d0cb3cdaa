"""The feature store built once for every test module of tests/feature_store that needs it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

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
