"""The feature store of one data directory and embedding version: build, materialize, point-in-time reads,
training sets. `python -m feature_store` (feature_store/__main__.py) is the command line over this module.

    repo = FeatureRepo("data/tiny", "v1", cfg)
    repo.build()              # raw + embedding tables -> feature tables -> rendered Feast repo -> feast apply
    repo.materialize()        # feature tables -> online store, as of cfg.materialize_end (default: data end)
    repo.training_sets()      # impressions -> get_historical_features -> training_sets/<version>/...
    repo.historical(rows)     # point-in-time features of any entity rows (ts + user/query/product/ad ids)

Feast does the point-in-time join (DuckDB offline store over the parquet feature tables) and serves the
online store; feature_store.derive computes the tables; feature_store.features assembles training-set columns.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import sqlite3
import string
import sys
import uuid
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from tqdm import tqdm

from core.config import ConfigError, config_to_dict
from core.files import locked, previous_version, restore_previous, staged_file, staged_folder, write_text_atomically
from feature_store import derive
from feature_store.config import SPLITS, FeatureStoreConfig, Layout, parse_time
from feature_store.features import (
    CONTEXT, DEFAULTS, ENTITY_KEYS, ID_COLUMNS, LABELS, STORE_FEATURES, STORE_TABLES, STORE_TYPES, TRAINING_COLUMNS,
    assemble, feature_groups,
)
from feature_store.schema import (
    COUNT_ENTITIES, COUNT_WINDOWS_DAYS, TABLES, TIMESTAMP, SchemaError, read_table, write_table,
)

PACKAGE_REPO = Path(__file__).resolve().parent / "repo"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
IMPRESSION_COLUMNS = tuple(dict.fromkeys(ID_COLUMNS + CONTEXT + LABELS))  # what a training row takes from the log
REGISTRY_STORE = "feature_store.store.AtomicFileRegistryStore"


def __getattr__(name: str):
    """AtomicFileRegistryStore, built on first use: Feast imports it by name (registry_store_type), and this
    module imports Feast only when a store is used."""
    if name == "AtomicFileRegistryStore":
        cls = _atomic_registry_store()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _atomic_registry_store():
    """Feast's file registry store, writing registry.db through a staged file and a rename: Feast's own store
    truncates and rewrites the file in place, so a kill mid-write (or a reader racing a writer) saw a truncated
    registry that no longer parses."""
    from feast.infra.registry.file import FileRegistryStore
    from feast.utils import _utc_now

    class AtomicFileRegistryStore(FileRegistryStore):
        def _write_registry(self, registry_proto) -> None:
            registry_proto.version_id = str(uuid.uuid4())
            registry_proto.last_updated.FromDatetime(_utc_now())
            self._filepath.parent.mkdir(exist_ok=True)
            with staged_file(self._filepath) as tmp:
                with open(tmp, "wb") as f:
                    f.write(registry_proto.SerializeToString())
                    f.flush()
                    os.fsync(f.fileno())

    return AtomicFileRegistryStore


def _close_sqlite(store) -> None:
    """Close the connection Feast's SQLite online store keeps open."""
    online_store = getattr(store._get_provider(), "online_store", None)
    conn = getattr(online_store, "_conn", None)
    if conn is not None:
        conn.close()
        online_store._conn = None


def _link_or_copy(src: str, dst: str) -> None:
    """Hard links for the unchanged tables of a staged offline folder (every table file is replaced by a rename,
    never rewritten in place, so sharing the inode is safe); a copy where links are not allowed."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def require_rows(table: pa.Table, name: str, path: Path) -> pa.Table:
    """An input table with no rows is refused: every feature table would be empty and every feature a default."""
    if table.num_rows == 0:
        raise SchemaError(name, None, "the table has no rows: the feature store needs every input table non-empty",
                          path)
    return table


def load_definitions():
    """feature_store/repo/definitions.py as a module (it is a Feast repo file, not a package module)."""
    name = "feature_store_repo_definitions"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, PACKAGE_REPO / "definitions.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def online_store_section(cfg: FeatureStoreConfig, layout: Layout) -> dict:
    """The rendered repo's `online_store` section: Feast's own SQLite or Redis store, as the config chooses
    (written as a one-line YAML flow mapping, so the template needs no indentation rules)."""
    if cfg.online_store == "redis":
        return {"type": "redis", "connection_string": cfg.redis_connection}
    return {"type": "sqlite", "path": str(layout.online)}


@contextlib.contextmanager
def online_store_errors(online_store):
    """A Redis that does not answer, as a ConnectionError naming the connection string and the config key (the
    CLI prints it as one line); other stores' errors pass through."""
    if online_store.type != "redis":
        yield
        return
    import redis  # the Redis store is configured, so its client is installed

    try:
        yield
    except redis.ConnectionError as err:
        raise ConnectionError(f"online store redis at {online_store.connection_string!r}: {err} (start "
                              "redis-server there or set redis_connection=host:port and build again)") from None


def embedding_metadata(layout: Layout, version: str) -> dict:
    """data/<name>/embeddings/<version>/metadata.json, checked."""
    path = layout.embeddings(version) / "metadata.json"
    if not path.exists():
        found = sorted(p.parent.name for p in path.parent.parent.glob("*/metadata.json"))
        raise FileNotFoundError(f"embedding version '{version}': no {path} (precompute the embeddings first; "
                                f"versions found: {', '.join(found) or 'none'})")
    meta = json.loads(path.read_text())
    dim = meta.get("embedding_dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"embedding version '{version}': {path}: 'embedding_dim' must be a positive int, got {dim!r}")
    if meta.get("embedding_version", version) != version:
        raise ValueError(f"embedding version '{version}': {path} says embedding_version "
                         f"'{meta['embedding_version']}'")
    return meta


def check_entity_rows(rows, where: str = "entity rows") -> pa.Table:
    """ts (timestamp with a zone) and the four int64 join keys, none null; SchemaError naming the column."""
    if isinstance(rows, pd.DataFrame):
        try:
            rows = pa.Table.from_pandas(rows, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise SchemaError(where, None, f"cannot convert to arrow: {err}") from None
    for name in ("ts",) + ENTITY_KEYS:
        if name not in rows.column_names:
            raise SchemaError(where, name, f"missing column (have: {', '.join(rows.column_names)})")
    ts = rows.column("ts")
    if not pa.types.is_timestamp(ts.type):
        raise SchemaError(where, "ts", f"has dtype {ts.type}, expected a timestamp with a time zone")
    if ts.type.tz is None:
        raise SchemaError(where, "ts", f"timestamp without a time zone ({ts.type}): a UTC time zone is required "
                                       "(pandas: .dt.tz_localize('UTC'))")
    columns = {"ts": ts.cast(TIMESTAMP)}
    for name in ("ts",) + ENTITY_KEYS:
        col = rows.column(name)
        if col.null_count:
            first = np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[:5].tolist()
            raise SchemaError(where, name, f"{col.null_count} null key values (rows {first})" if name != "ts"
                              else f"{col.null_count} null timestamps (rows {first})")
        if name != "ts":
            if not pa.types.is_integer(col.type):
                raise SchemaError(where, name, f"has dtype {col.type}, expected int64 ids")
            columns[name] = col.cast(pa.int64())
    return pa.table(columns)


def _epoch_us(t: datetime) -> int:
    """Microseconds since the epoch, exactly (no float seconds on the way)."""
    return (t - EPOCH) // timedelta(microseconds=1)


def _chunks(files, rows: int):
    """Impressions of the part files, validated part by part, in chunks of `rows` (across part boundaries)."""
    buffer, buffered = [], 0
    for file in files:
        part = read_table("impressions", file, columns=list(IMPRESSION_COLUMNS))
        buffer.append(part)
        buffered += part.num_rows
        while buffered >= rows:
            table = pa.concat_tables(buffer)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            buffer, buffered = [rest], rest.num_rows
    if buffered:
        yield pa.concat_tables(buffer)


class FeatureRepo:
    """The feature store of one data directory, seen through one embedding version."""

    def __init__(self, data_dir: str | Path, embedding_version: str, cfg: FeatureStoreConfig | None = None):
        self.layout = Layout(data_dir)
        self.version = embedding_version
        self.cfg = cfg or FeatureStoreConfig()
        self.defs = load_definitions()
        self.views = self.defs.view_names(embedding_version, COUNT_ENTITIES)  # feature table -> view name
        self._store = None

    # -----------------------------------------------------------------------------------------------------------
    # Paths, Feast objects

    def table_path(self, table: str) -> Path:
        return self.defs.table_path(self.layout.offline, table, self.version)

    def feature_refs(self) -> list[str]:
        """Every feature the training set needs, as Feast references view:feature."""
        return [f"{self.views[t]}:{f}" for t, feats in STORE_TABLES.items() for f in feats]

    @property
    def store(self):
        """The Feast FeatureStore of the rendered repository (after build)."""
        if self._store is None:
            if not (self.layout.repo / "feature_store.yaml").exists():
                raise FileNotFoundError(f"no feature store at {self.layout.features}: run "
                                        f"`python -m feature_store build --data {self.layout.data} "
                                        f"--embeddings {self.version}` first")
            self._store = self._feature_store()
        return self._store

    def _feature_store(self, online_path: Path | None = None):
        """A Feast FeatureStore of the rendered repo whose file registry is written atomically; `online_path`:
        a SQLite online store file other than the rendered one (materialize writes a staged copy)."""
        from feast import FeatureStore  # Feast loads here, when a store is used, not on import
        from feast.repo_config import load_repo_config

        config = load_repo_config(self.layout.repo, self.layout.repo / "feature_store.yaml")
        registry = config.registry_config
        if isinstance(registry, dict) and registry.get("registry_type", "file") == "file" \
                and "://" not in str(registry.get("path", "")) and not registry.get("registry_store_type"):
            registry["registry_store_type"] = REGISTRY_STORE
        if online_path is not None:
            config.online_config = {**config.online_config, "path": str(online_path)}
        return FeatureStore(repo_path=str(self.layout.repo), config=config)

    @property
    def lock(self) -> Path:
        """The lock every command of this data directory's feature store holds while it writes."""
        return self.layout.features / ".lock"

    @contextlib.contextmanager
    def _writing(self):
        """What every command runs under: the store's lock (a second command waits), and the offline folder and
        this version's training sets put back at their names if a command was killed between the two renames of
        their swap (core.files.previous_version)."""
        with locked(self.lock, waiting=f"waiting for another `python -m feature_store` command on "
                                       f"{self.layout.features} to finish (lock {self.lock})"):
            restore_previous(self.layout.offline)
            restore_previous(self.layout.training_sets(self.version))
            yield

    def registered_dim(self) -> int | None:
        """The embedding_dim this version is registered with in the Feast registry (None if not registered)."""
        if not self.layout.registry.exists() or not (self.layout.repo / "feature_store.yaml").exists():
            return None
        from feast.errors import FeatureViewNotFoundException  # Feast only once a registry exists

        try:
            fv = self.store.get_feature_view(self.views["product_embedding_features"])
        except FeatureViewNotFoundException:
            return None
        return int(fv.tags["embedding_dim"])

    def embedding_dim(self) -> int:
        """The registered dim; errors if the version is not built or its embedding tables changed since."""
        dim = self.registered_dim()
        if dim is None:
            raise FileNotFoundError(f"embedding version '{self.version}' is not registered in "
                                    f"{self.layout.registry}: run `python -m feature_store build --data "
                                    f"{self.layout.data} --embeddings {self.version}` first")
        meta_dim = embedding_metadata(self.layout, self.version)["embedding_dim"]
        if meta_dim != dim:
            raise SchemaError("product_embeddings", "embedding",
                              f"embedding version '{self.version}' is registered with embedding_dim {dim}, but "
                              f"its metadata.json now says {meta_dim}: rebuild under a new embedding version",
                              self.layout.embeddings(self.version))
        return dim

    # -----------------------------------------------------------------------------------------------------------
    # build

    def build(self) -> dict:
        """Compute the feature tables from the raw and embedding tables, render the repo and apply it.

        All or nothing: every input is read and validated (and refused when empty) before anything is written;
        the tables are written into a staged copy of the offline folder that replaces it in one swap, so a build
        that fails or is killed leaves the previous offline store as it was. The repo files and the registry
        (each written atomically) follow the swap; a rerun rewrites them to the same content."""
        meta = embedding_metadata(self.layout, self.version)
        self._template()  # a template that cannot take the configured online store fails before any work
        dim = meta["embedding_dim"]
        with self._writing():
            registered = self.registered_dim()
            if registered is not None and registered != dim:
                raise SchemaError("product_embeddings", "embedding",
                                  f"embedding version '{self.version}' is registered with embedding_dim "
                                  f"{registered}, its tables now have {dim}: use a new embedding version name",
                                  self.layout.embeddings(self.version))
            steps = tqdm(total=11, desc=f"feature_store build {self.version}", disable=not self.cfg.progress)
            inputs = self._inputs(dim)
            steps.update(1)
            rows = self._write_offline(inputs, dim, steps)
            self._apply(dim, meta)
            steps.update(1)
            steps.close()
        return {"embedding_version": self.version, "embedding_dim": dim, "rows": rows}

    def _inputs(self, dim: int) -> dict[str, tuple[pa.Table, Path]]:
        """Every input table, read, validated and checked non-empty: {table: (rows, path)}."""
        emb = self.layout.embeddings(self.version)
        paths = {"product_embeddings": emb / "products", "query_embeddings": emb / "queries",
                 "products": self.layout.raw("products"), "impressions": self.layout.raw("impressions"),
                 "purchases": self.layout.raw("purchases")}
        read = {
            "product_embeddings": lambda p: read_table("product_embeddings", p, embedding_dim=dim),
            "query_embeddings": lambda p: read_table("query_embeddings", p, embedding_dim=dim),
            "products": lambda p: read_table("products", p, columns=[],  # absent ones: defaults
                                             if_present=["aisle", "brand", "store_id", "price", "created_ts"]),
            "impressions": lambda p: read_table("impressions", p, columns=["ts", "user_id", "query_id",
                                                                          "product_id", "ad_id", "click",
                                                                          "rating", "rating_count"]),
            "purchases": lambda p: read_table("purchases", p),
        }
        return {name: (require_rows(read[name](path), name, path), path) for name, path in paths.items()}

    def _derived(self, inputs: dict, dim: int) -> dict:
        """{feature table: (the input tables it is computed from, how)}."""
        table = {name: rows for name, (rows, _) in inputs.items()}
        impressions = table["impressions"]
        first_us = int(pc.min(impressions.column("ts")).cast(pa.int64()).as_py())
        return {
            "product_embedding_features": (("product_embeddings",),
                                           lambda: derive.embedding_features("product", table["product_embeddings"])),
            "query_embedding_features": (("query_embeddings",),
                                         lambda: derive.embedding_features("query", table["query_embeddings"])),
            "user_history_features": (("purchases", "product_embeddings"), lambda: derive.user_history_features(
                table["purchases"], table["product_embeddings"], dim, self.cfg.history_days, keep_from_us=first_us)),
            "product_attribute_features": (("products",), lambda: derive.product_attribute_features(table["products"])),
            "product_rating_features": (("impressions",), lambda: derive.product_rating_features(impressions)),
            **{f"{e}_count_features": (("impressions",), lambda e=e: derive.count_features(e, impressions))
               for e in COUNT_ENTITIES},
        }

    def _write_offline(self, inputs: dict, dim: int, steps) -> dict[str, int]:
        """Write every feature table into a staged copy of the offline folder (the other embedding versions'
        tables linked in unchanged) and swap it in. A derived table that fails its contract names the inputs it
        came from: the problem is in them, not in the feature store."""
        offline = self.layout.offline
        mine = {self.table_path(t).parent.relative_to(offline) for t in STORE_TABLES}
        rows = {}
        with staged_folder(offline, old=previous_version(offline)) as tmp:
            tmp.chmod(0o755)  # a staging folder is private (0700); the offline store is not
            if offline.is_dir():
                for entry in sorted(offline.rglob("*")):
                    rel = entry.relative_to(offline)
                    if any(rel == m or m in rel.parents for m in mine) or not entry.is_file():
                        continue
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    _link_or_copy(str(entry), str(tmp / rel))
            for table, (sources, compute) in self._derived(inputs, dim).items():
                steps.set_postfix_str(table)
                try:
                    data = compute()
                except SchemaError as err:
                    names = " and ".join(f"'{s}' ({inputs[s][1]})" for s in sources)
                    raise SchemaError(sources[0], None, f"the input table(s) {names} give an invalid feature table "
                                      f"'{table}': {err.problem}" + (f" (column '{err.column}')" if err.column
                                                                      else ""), inputs[sources[0]][1]) from None
                write_table(table, data, tmp / self.table_path(table).parent.relative_to(offline),
                            embedding_dim=dim if table in self.defs.VERSIONED_TABLES else None)
                rows[table] = data.num_rows
                steps.update(1)
        return rows

    def _template(self) -> str:
        """The feature_store.yaml template's text. A template with its own online_store section (no
        ${ONLINE_STORE}) keeps it, so it cannot take a non-default online_store key: ConfigError."""
        template = Path(self.cfg.repo_template) if self.cfg.repo_template else PACKAGE_REPO / "feature_store.yaml"
        text = template.read_text()
        if "${ONLINE_STORE}" not in text and self.cfg.online_store != "sqlite":
            raise ConfigError(f"FeatureStoreConfig: 'online_store': {self.cfg.online_store!r} needs the line "
                              f"'online_store: ${{ONLINE_STORE}}' in the repo template {template}, which writes its "
                              "own online_store section (keep that section and drop the key, or use the placeholder)")
        return text

    def _render(self, versions: dict) -> dict:
        """Render feature_store.yaml, definitions.py and params.json into data/<name>/features/repo/."""
        text = string.Template(self._template()).safe_substitute(
            FEATURES_DIR=str(self.layout.features), DATA_DIR=str(self.layout.data), PROJECT=self.cfg.project,
            ONLINE_STORE=json.dumps(online_store_section(self.cfg, self.layout)))
        offline = (yaml.safe_load(text).get("offline_store") or {}).get("type", "duckdb")
        params = {
            "project": self.cfg.project, "offline_store": offline, "bigquery_dataset": self.cfg.bigquery_dataset,
            "offline_dir": str(self.layout.offline), "count_windows_days": list(COUNT_WINDOWS_DAYS),
            "count_entities": list(COUNT_ENTITIES), "versions": versions,
        }
        self.layout.repo.mkdir(parents=True, exist_ok=True)
        write_text_atomically(self.layout.repo / "feature_store.yaml", text)
        write_text_atomically(self.layout.repo / "definitions.py", (PACKAGE_REPO / "definitions.py").read_text())
        write_text_atomically(self.layout.repo / "params.json", json.dumps(params, indent=2, sort_keys=True) + "\n")
        return params

    def _apply(self, dim: int, meta: dict) -> None:
        params_path = self.layout.repo / "params.json"
        versions = json.loads(params_path.read_text())["versions"] if params_path.exists() else {}
        versions[self.version] = {"embedding_dim": dim, "history_days": self.cfg.history_days,
                                  "model": meta.get("model", {})}
        params = self._render(versions)
        self._store = None  # re-read the rendered config
        self.store.apply(self.defs.build_objects(params))

    # -----------------------------------------------------------------------------------------------------------
    # checks shared by materialize, training sets and the online path

    def built_params(self) -> dict:
        """What `build` recorded for this version in the rendered repo's params.json."""
        return json.loads((self.layout.repo / "params.json").read_text())["versions"][self.version]

    def check_tables(self, dim: int) -> dict[str, int]:
        """Read and validate every feature table the views serve (SchemaError names table and column)."""
        rows = {}
        for table in STORE_TABLES:
            versioned = table in self.defs.VERSIONED_TABLES  # the tables holding embeddings
            rows[table] = read_table(table, self.table_path(table), embedding_dim=dim if versioned else None).num_rows
        return rows

    def splits(self) -> dict[str, tuple[datetime, datetime]]:
        """{split: (start, end)} from the config, else from world.json."""
        if self.cfg.splits:
            return {s: tuple(parse_time(b, f"splits.{s}") for b in self.cfg.splits[s])
                    for s in SPLITS if s in self.cfg.splits}
        world = self.layout.world()
        if not world or "splits" not in world:
            raise ValueError(f"{self.layout.data}: no world.json with splits; set splits.train=[start,end] "
                             "(and valid, test) in the feature-store config")
        return {s: tuple(parse_time(b, f"world.json splits.{s}") for b in world["splits"][s])
                for s in SPLITS if s in world["splits"]}

    # -----------------------------------------------------------------------------------------------------------
    # online store

    def materialize(self, end: datetime | None = None) -> datetime:
        """Rewrite the online store of this version's views with the latest rows at or before `end`.

        SQLite: the rewrite goes into a staged copy of online.db that replaces it in one rename, so a reader (or a
        run killed midway) never sees a half-written store. Redis: Feast writes the keys in place, so a reader
        may see a mix while it runs; a rerun rewrites every view from scratch (the same final state). Under the
        feature store's lock, like build and training-set: a second run waits for the first."""
        with self._writing():
            return self._materialize_locked(end)

    def _materialize_locked(self, end: datetime | None) -> datetime:
        dim = self.embedding_dim()
        self.check_tables(dim)
        if end is None:
            end = (parse_time(self.cfg.materialize_end, "materialize_end") if self.cfg.materialize_end
                   else max(b for _, b in self.splits().values()))
        if end.tzinfo is None:
            raise SchemaError("materialize", "end", f"{end} has no time zone: a UTC time is required")
        built_with = self.store.config.online_store.type
        if self.cfg.online_store != "sqlite" and built_with != self.cfg.online_store:  # the key is read by build
            raise ConfigError(f"FeatureStoreConfig: 'online_store' is {self.cfg.online_store!r}, but "
                              f"{self.layout.repo} was built with the {built_with!r} online store: run `build` with "
                              f"online_store={self.cfg.online_store} first")
        if built_with != "sqlite":
            self._materialize(self.store, end)
            return end
        online = Path(self.store.config.online_store.path)
        if not online.is_absolute():
            online = self.layout.repo / online
        with staged_file(online) as tmp:
            if online.exists():  # other versions' views stay as they are
                with contextlib.closing(sqlite3.connect(online)) as src, \
                        contextlib.closing(sqlite3.connect(tmp)) as dst:
                    src.backup(dst)
            staged = self._feature_store(online_path=tmp)
            self._materialize(staged, end)
            _close_sqlite(staged)  # every write committed and the file closed before the rename
        self._store = None  # the registry now records the materialization
        return end

    def _materialize(self, store, end: datetime) -> None:
        views = list(self.views.values())
        fvs = [store.get_feature_view(v) for v in views]
        provider = store._get_provider()
        with online_store_errors(store.config.online_store):
            # A full rewrite: the online store then holds exactly the state as of `end`, even for an earlier end.
            provider.update_infra(project=store.project, tables_to_delete=fvs, tables_to_keep=[],
                                  entities_to_delete=[], entities_to_keep=[], partial=True)
            provider.update_infra(project=store.project, tables_to_delete=[], tables_to_keep=fvs,
                                  entities_to_delete=[], entities_to_keep=[], partial=True)
            with warnings.catch_warnings(), contextlib.ExitStack() as quiet:
                warnings.simplefilter("ignore", DeprecationWarning)
                if not self.cfg.progress:  # Feast prints its own progress bars
                    quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
                    quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
                store.materialize(start_date=EPOCH, end_date=end, feature_views=views)

    # -----------------------------------------------------------------------------------------------------------
    # offline: point-in-time features and training sets

    def historical(self, rows) -> pa.Table:
        """Store features (nulls where unknown) of entity rows (ts + user/query/product/ad ids), in row order,
        by Feast's point-in-time join: for each view, its latest row with event_ts <= ts."""
        rows = check_entity_rows(rows)
        n = rows.num_rows
        entity_df = pd.DataFrame({
            "event_timestamp": rows.column("ts").to_pandas(),
            **{k: rows.column(k).to_numpy() for k in ENTITY_KEYS},
            "fs_row": np.arange(n, dtype=np.int64),
        })
        with warnings.catch_warnings():  # ibis calls a DuckDB method DuckDB deprecated; nothing for users to do
            warnings.simplefilter("ignore", DeprecationWarning)
            job = self.store.get_historical_features(entity_df=entity_df, features=self.feature_refs())
            out = job.to_arrow()
        if out.num_rows != n:  # the DuckDB store keeps every entity row; anything else is a Feast bug
            raise RuntimeError(f"point-in-time join returned {out.num_rows} rows for {n} entity rows")
        return out.take(pc.sort_indices(out.column("fs_row")))

    def training_sets(self) -> dict:
        """training_sets/<version>/{train,valid,test}/part-*.parquet + metadata.json, written into a staged folder
        renamed into place. Under the feature store's lock: a second run waits, then writes the same folder again
        (two runs racing their renames would otherwise fail one with an OSError and leave a stray folder)."""
        with self._writing():
            return self._training_sets()

    def _training_sets(self) -> dict:
        meta = embedding_metadata(self.layout, self.version)
        dim = self.embedding_dim()
        table_rows = self.check_tables(dim)
        splits = self.splits()
        bounds_us = {s: (_epoch_us(a), _epoch_us(b)) for s, (a, b) in splits.items()}
        target = self.layout.training_sets(self.version)
        parts = {s: 0 for s in splits}
        rows = {s: 0 for s in splits}
        outside = 0
        files = sorted(p for p in self.layout.raw("impressions").glob("*.parquet") if not p.name.startswith((".", "_")))
        if not files:
            raise FileNotFoundError(f"table 'impressions': no parquet files in {self.layout.raw('impressions')}")
        bar = tqdm(files, desc=f"training sets {self.version}", unit="part", disable=not self.cfg.progress)
        with staged_folder(target, old=previous_version(target)) as tmp:
            for chunk in _chunks(bar, self.cfg.chunk_rows):
                store = self.historical(chunk.select(["ts", *ENTITY_KEYS]))
                table = assemble({c: chunk.column(c) for c in IMPRESSION_COLUMNS},
                                 {f: store.column(f) for f in STORE_FEATURES}, dim)
                ts = chunk.column("ts").cast(pa.int64()).to_numpy()
                taken = np.zeros(len(ts), bool)
                for s, (a, b) in bounds_us.items():
                    mask = (ts >= a) & (ts < b)
                    taken |= mask
                    if mask.any():
                        write_table("training_set", table.filter(pa.array(mask)), tmp / s, part=parts[s],
                                    embedding_dim=dim)
                        parts[s] += 1
                        rows[s] += int(mask.sum())
                outside += int((~taken).sum())
                bar.set_postfix(rows=sum(rows.values()))
            for s in splits:
                if parts[s] == 0:  # an empty split is still a readable folder
                    empty = assemble({c: pa.array([], TABLES["training_set"].column(c).dtype)
                                      for c in IMPRESSION_COLUMNS},
                                     {f: pa.nulls(0, STORE_TYPES[f]) for f in STORE_FEATURES}, dim)
                    write_table("training_set", empty, tmp / s, part=0, embedding_dim=dim)
            metadata = {
                "embedding_version": self.version,
                "embedding_dim": dim,
                "embedding_model": meta.get("model", {}),
                "data_dir": str(self.layout.data),
                "columns": [{"name": c, "dtype": str(TABLES["training_set"].column(c).dtype)}
                            for c in TRAINING_COLUMNS],
                "features": feature_groups(),
                "count_windows_days": list(COUNT_WINDOWS_DAYS),
                "history_days": self.built_params().get("history_days", self.cfg.history_days),
                "splits": {s: [a.isoformat().replace("+00:00", "Z"), b.isoformat().replace("+00:00", "Z")]
                           for s, (a, b) in splits.items()},
                "rows": rows,
                "rows_outside_splits": outside,
                "defaults": DEFAULTS,
                "feature_table_rows": table_rows,
                "feast": {"project": self.cfg.project, "repo": str(self.layout.repo),
                          "feature_refs": self.feature_refs()},
                "config": config_to_dict(self.cfg),
            }
            write_text_atomically(tmp / "metadata.json", json.dumps(metadata, indent=2) + "\n")
        return metadata
