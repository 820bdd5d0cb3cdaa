"""Shared fixtures: worlds generated once per test session into a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports TensorFlow

ROOT = Path(__file__).resolve().parents[1]
WORLD_CONFIGS = ROOT / "experiments" / "configs" / "world"
# Small real public data sets (click logs, relevance judgments, photos), never copied into the repository: tests
# that read them skip cleanly when the folder is absent. DASHCLIP_PUBLIC_DATA points elsewhere.
SHARED_DATA = Path(os.environ.get("DASHCLIP_PUBLIC_DATA", ROOT.parent / "shared" / "data"))


def _world(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    from core.config import load_config
    from experiments.simulate import simulate
    from experiments.world import WorldConfig

    out = tmp_path_factory.mktemp("worlds") / name
    simulate(load_config(WorldConfig, WORLD_CONFIGS / f"{name}.yaml"), out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/<tiny>: the tiny world, generated once."""
    return _world(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo world (the embedded default), generated once; its promises are tested on it."""
    return _world(tmp_path_factory, "demo")
