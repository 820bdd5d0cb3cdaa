"""The tiny world with seeded stand-in embeddings, as the feature-store tests build it through the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from feature_store.__main__ import main
from feature_store.schema import read_table
from tests.conftest import ROOT
from tests.helpers.embeddings import write_standin_embeddings

CONFIG = str(ROOT / "experiments" / "configs" / "features" / "tiny.yaml")
VERSION, DIM = "standin-v1", 16


def run(command: str, data: Path, *overrides: str, version: str = VERSION) -> None:
    """`python -m feature_store <command>` on `data` with the tiny config, in this process."""
    assert main([command, "--data", str(data), "--embeddings", version, "--config", CONFIG, "progress=false",
                 *overrides]) == 0


def training_set(data: Path, version: str = VERSION) -> pd.DataFrame:
    """Every split of the version's training set, validated, indexed by impression_id."""
    folder = data / "training_sets" / version
    parts = [read_table("training_set", folder / s, embedding_dim=DIM).to_pandas() for s in ("train", "valid", "test")]
    return pd.concat(parts, ignore_index=True).set_index("impression_id", drop=False).sort_index()


def late_product(data: Path) -> tuple[int, pd.Timestamp]:
    """The most shown product and the median time of its impressions: its vector will arrive then."""
    imp = pd.read_parquet(data / "raw" / "impressions", columns=["product_id", "ts"])
    pid = int(imp.product_id.value_counts().index[0])
    return pid, imp.ts[imp.product_id == pid].sort_values().iloc[len(imp[imp.product_id == pid]) // 2]


def make_world(tiny_world: Path, into: Path, keep_hidden: bool = False) -> Path:
    """A copy of the tiny world's raw tables (and its hidden truth with keep_hidden, which the A/B simulation
    reads) with stand-in embeddings; one product's vector arrives late."""
    data = into / "tiny"
    skip = ("features", "training_sets", "experiments") + (() if keep_hidden else ("hidden",))
    shutil.copytree(tiny_world, data, ignore=shutil.ignore_patterns(*skip))
    pid, arrives = late_product(data)
    write_standin_embeddings(data, VERSION, DIM, seed=0, product_event_us={pid: arrives.value // 1000})
    return data


def request_context(rows: pd.DataFrame) -> dict:
    """The request-time fields of one request's training rows, as OnlineFeatures.get takes them."""
    return {"ts": rows.ts.iloc[0].to_pydatetime(), "device": rows.device.iloc[0],
            "position": rows.position.to_numpy(), "discount": rows.discount.to_numpy(),
            "store_distance_km": rows.store_distance_km.to_numpy()}


def plain_context(at: pd.Timestamp) -> dict:
    """Request-time fields of a request at `at`, the same for every candidate."""
    return {"ts": at.to_pydatetime(), "device": "app", "position": 1, "discount": 0.0, "store_distance_km": 1.0}
