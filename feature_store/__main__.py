"""The feature store's command line.

    python -m feature_store build        --data data/<name> --embeddings <version> [--config PATH] [key=value ...]
    python -m feature_store materialize  --data data/<name> --embeddings <version> [materialize_end=<ISO time>]
    python -m feature_store training-set --data data/<name> --embeddings <version>

build         raw tables + embedding tables -> feature tables (data/<name>/features/offline/), the rendered Feast
              repository (data/<name>/features/repo/) and `feast apply` into data/<name>/features/registry.db
materialize   feature tables -> online store (online_store=sqlite: data/<name>/features/online.db; redis: the
              Redis at redis_connection), state as of materialize_end (default: the end of the last split)
training-set  impressions -> point-in-time features -> data/<name>/training_sets/<version>/{train,valid,test}/
              and metadata.json
Every command is all or nothing and takes the data directory's lock (data/<name>/features/.lock): build
validates every input (an empty table is refused) before it writes, and swaps in a staged offline folder;
materialize renames a staged online.db into place (SQLite); training-set renames a staged folder. A second
command on the same data directory waits for the first (it says so on stderr), so two runs at once both succeed.
Configs: experiments/configs/features/<name>.yaml (overrides of feature_store.config.FeatureStoreConfig).
The online store is chosen at build (online_store=sqlite|redis, redis_connection=host:port); materialize and
serving use what the build rendered. A bad config, table or connection: one line `error: ...`, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from core.config import ConfigError, add_config_args, config_from_args, exit_on
from feature_store.config import FeatureStoreConfig
from feature_store.schema import SchemaError
from feature_store.store import FeatureRepo

COMMANDS = ("build", "materialize", "training-set")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feature_store", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--data", type=Path, required=True, help="the data directory, e.g. data/demo")
    parser.add_argument("--embeddings", required=True, metavar="VERSION",
                        help="embedding version: the folder data/<name>/embeddings/<VERSION>/")
    add_config_args(parser)
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options
    cfg = config_from_args(FeatureStoreConfig, args)
    repo = FeatureRepo(args.data, args.embeddings, cfg)
    started = time.perf_counter()
    if args.command == "build":
        result = repo.build()
    elif args.command == "materialize":
        result = {"materialized_until": repo.materialize().isoformat()}
    else:
        meta = repo.training_sets()
        result = {"training_sets": str(repo.layout.training_sets(args.embeddings)), "rows": meta["rows"],
                  "embedding_dim": meta["embedding_dim"]}
    result = {"command": args.command, "seconds": round(time.perf_counter() - started, 2), **result}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    exit_on(main, ConfigError, SchemaError, FileNotFoundError, ConnectionError)
