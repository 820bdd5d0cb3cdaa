"""Fixtures of the DashCLIP tests; Hugging Face stays offline (nothing here is ever downloaded)."""

from __future__ import annotations

import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports transformers


@pytest.fixture()
def world(tiny_world, tmp_path, monkeypatch):
    """A private copy of the tiny world and a private MLflow store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    shutil.copytree(tiny_world, tmp_path / "tiny")
    return tmp_path / "tiny"
