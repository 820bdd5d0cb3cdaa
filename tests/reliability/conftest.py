"""Fixtures of the reliability tests: the tiny inputs every kill-and-resume test trains on, made once per session.

    store_env(tmp)         processes.entry_env(tmp) with a ready MLflow store in tmp (copied, not created)
    ranking_training_set   the synthetic training set of tests/helpers/training_sets.py (500 requests, 16-d
                           embeddings, a world with impression truth): seconds for a neural ranking.train
    tiny_world (tests/conftest.py) is the embeddings' input; a test copies it before writing beside it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.training_sets import make_training_set


@pytest.fixture(scope="session")
def ranking_training_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """training_sets/synth-v1/ of a synthetic world of 500 requests (about 2,900 train rows)."""
    return make_training_set(tmp_path_factory.mktemp("reliability_ranking"), n_requests=500)


@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with its tables created: creating them takes a new store seconds (a chain of
    alembic migrations), so each test copies this file instead of having its first subprocess create one."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("mlflow_template")
    SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", str(folder / "artifacts"))
    return folder / "mlflow.db"


@pytest.fixture(scope="session")
def store_env(mlflow_store_template: Path):
    """store_env(tmp) -> processes.entry_env(tmp) with tmp/mlflow.db a copy of the empty template store."""
    from tests.reliability.processes import entry_env

    def make(tmp: Path, **extra: str) -> dict[str, str]:
        shutil.copyfile(mlflow_store_template, tmp / "mlflow.db")
        return entry_env(tmp, **extra)

    return make
