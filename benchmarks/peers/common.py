"""What the peer runners share (stdlib + pandas only: it runs inside the peers' own virtualenvs): read a training
set written by `python -m ranking.prepare` the same way for every library."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd


def read_fold(folder: str | Path):
    """(train, valid, test DataFrames, sparse columns, dense columns, vocabulary sizes); dense = signed log1p with
    missing -> 0, then standardised on train (the same inputs for every library)."""
    folder = Path(folder)
    meta = json.loads((folder / "metadata.json").read_text())
    sparse, dense = meta["features"]["id_features"], meta["features"]["dense_features"]
    splits = [pd.read_parquet(folder / s) for s in ("train", "valid", "test")]
    for c in dense:
        for df in splits:
            x = df[c].astype(np.float64).fillna(0.0)
            df[c] = np.sign(x) * np.log1p(np.abs(x))
        mu, sd = splits[0][c].mean(), splits[0][c].std() or 1.0
        for df in splits:
            df[c] = ((df[c] - mu) / sd).astype(np.float32)
    vocab = {c: int(max(df[c].max() for df in splits)) + 1 for c in sparse}
    return splits[0], splits[1], splits[2], sparse, dense, vocab


def metrics(y, p) -> dict:
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.clip(np.asarray(p, np.float64).reshape(-1), 1e-7, 1 - 1e-7)
    return {"auc": float(roc_auc_score(y, p)), "logloss": float(log_loss(y, p))}


def rate(examples: int, seconds: float, vocab: dict[str, int]) -> dict:
    """A throughput run's result: examples trained, seconds, examples/s and the vocabulary's size."""
    return {"examples": examples, "seconds": seconds, "examples_per_s": examples / seconds,
            "vocabulary": int(sum(vocab.values()))}


def main(accuracy, throughput) -> None:
    """A runner's command line, `<folder> <seed> [--throughput EPOCHS] [--threads N]`: one JSON line on stdout,
    accuracy(folder, seed) or, with --throughput, throughput(folder, seed, epochs, threads)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("seed", type=int)
    parser.add_argument("--throughput", type=int, default=0, metavar="EPOCHS")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(throughput(args.folder, args.seed, args.throughput, args.threads) if args.throughput else
                     accuracy(args.folder, args.seed)))
