"""The feature store's typed config and its on-disk layout (docs/design.md).

    data/<name>/features/
        repo/                   rendered Feast repository: feature_store.yaml, definitions.py, params.json
        registry.db             Feast registry
        online.db               SQLite online store (online_store: sqlite; with redis the rows live in Redis)
        offline/<table>/        feature tables that do not depend on the embedding version
        offline/<version>/<table>/   feature tables of one embedding version
    data/<name>/training_sets/<version>/{train,valid,test}/part-*.parquet, metadata.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from core.config import ConfigError

SPLITS = ("train", "valid", "test")
ONLINE_STORES = ("sqlite", "redis")


@dataclass(frozen=True)
class FeatureStoreConfig:
    """Every knob of `python -m feature_store`. YAML files under experiments/configs/features/ override these."""

    name: str = "demo"
    project: str = "dashclip_ads"  # the Feast project (online tables and registry entries are under it)
    history_days: int = 84  # the purchase-history window
    # Time splits of the training sets, {split: [start, end)} as ISO times with a zone (e.g. 2026-01-05T00:00:00Z).
    # Empty: the world's splits from data/<name>/world.json (a user's own data must set them).
    splits: dict[str, tuple[str, str]] = field(default_factory=dict)
    repo_template: str = ""  # a feature_store.yaml template; "" is feature_store/repo/feature_store.yaml
    # The online store `build` renders into the repo (its ${ONLINE_STORE}); materialize and OnlineFeatures then use
    # whatever the rendered repo says, so switching stores is a `build` with the new key, then `materialize`
    # (materialize with online_store=redis on a repo built for sqlite is an error, not a silent SQLite write).
    #   sqlite: Feast's SQLite store, the file data/<name>/features/online.db (one process, one machine)
    #   redis:  Feast's Redis store (`type: redis`) at redis_connection, shared by every serving process
    online_store: str = "sqlite"
    # Feast's Redis connection_string: host:port[,db=N][,password=...][,ssl=true]. Feast expands environment
    # variables when it loads the repo, so "${REDIS_CONNECTION}" keeps a password out of the files written here.
    # One Redis database serves one Feast project: give each data directory its own `project` or db=N.
    redis_connection: str = "localhost:6379"
    bigquery_dataset: str = ""  # for a template whose offline store is bigquery: the dataset holding the tables
    chunk_rows: int = 50_000  # impressions per point-in-time join: memory grows with it, time hardly shrinks
    materialize_end: str = ""  # ISO time to materialize up to; "" is the end of the last split
    progress: bool = True

    def validate(self) -> None:
        if self.history_days < 1:
            raise ConfigError(f"FeatureStoreConfig: 'history_days' must be >= 1, got {self.history_days}")
        if self.chunk_rows < 1:
            raise ConfigError(f"FeatureStoreConfig: 'chunk_rows' must be >= 1, got {self.chunk_rows}")
        for split, bounds in self.splits.items():
            if split not in SPLITS:
                raise ConfigError(f"FeatureStoreConfig: 'splits.{split}': unknown split (use {', '.join(SPLITS)})")
            start, end = (parse_time(b, f"splits.{split}") for b in bounds)
            if not start < end:
                raise ConfigError(f"FeatureStoreConfig: 'splits.{split}': start must be before end, got {bounds}")
        if self.materialize_end:
            parse_time(self.materialize_end, "materialize_end")
        if self.online_store not in ONLINE_STORES:
            raise ConfigError(f"FeatureStoreConfig: 'online_store' must be one of {', '.join(ONLINE_STORES)}, "
                              f"got {self.online_store!r}")
        if self.online_store == "redis" and not self.redis_connection.strip():
            raise ConfigError("FeatureStoreConfig: 'redis_connection' is empty: expected host:port[,db=N,...] "
                              "(Feast's Redis connection_string)")


def parse_time(text: str, key: str) -> datetime:
    """An ISO time with a time zone ('Z' or an offset) as an aware UTC datetime; ConfigError naming `key`."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise ConfigError(f"FeatureStoreConfig: '{key}': not an ISO time: {text!r}") from None
    if value.tzinfo is None:
        raise ConfigError(f"FeatureStoreConfig: '{key}': {text!r} has no time zone (append 'Z' for UTC)")
    return value.astimezone(timezone.utc)


class Layout:
    """Paths of one data directory (absolute, so the rendered Feast config works from any working directory)."""

    def __init__(self, data_dir: str | Path):
        self.data = Path(data_dir).resolve()
        self.features = self.data / "features"
        self.repo = self.features / "repo"
        self.registry = self.features / "registry.db"
        self.online = self.features / "online.db"
        self.offline = self.features / "offline"

    def raw(self, table: str) -> Path:
        return self.data / "raw" / table

    def embeddings(self, version: str) -> Path:
        return self.data / "embeddings" / version

    def training_sets(self, version: str) -> Path:
        return self.data / "training_sets" / version

    def world(self) -> dict | None:
        path = self.data / "world.json"
        return json.loads(path.read_text()) if path.exists() else None
