"""sentence-transformers' own fine-tune of all-MiniLM-L6-v2 on (query, product title) pairs: the peer row of
benchmarks/esci_bench.py. Runs in its own virtualenv (.bench-venvs/st, made by benchmarks/peers/setup_venvs.sh st:
sentence-transformers 6.3.0 on torch 2.13.0 CPU, datasets); it never imports the project.

    .bench-venvs/st/bin/python benchmarks/peers/st_finetune.py --model DIR --train TRAIN.jsonl --queries Q.json \
        --titles T.json --out DIR --seed S [--max-steps K] [--threads 1]

The recipe, what a user of sentence-transformers writes: SentenceTransformer(<the shipped all-MiniLM-L6-v2
directory>), MultipleNegativesRankingLoss (in-batch negatives, scale 20), 1 epoch, batch 32, AdamW lr 2e-5,
warmup_ratio 0.1, linear schedule, weight_decay 0.01, the default (random) batch sampler, seed S, on CPU with
`threads` torch threads. --max-steps K > 0 stops after K steps (ST's `max_steps`; short runs only).

Inputs: TRAIN.jsonl, one {"query": str, "title": str} per line (the training Exact pairs); Q.json and T.json, JSON
lists of the test queries' texts and the test products' titles. Outputs, in --out: queries.npy and titles.npy
(float32, L2-normalised, one row per input text in order); prints one JSON line (train seconds, steps, versions).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_DISABLED"] = "true"

RECIPE = {"loss": "MultipleNegativesRankingLoss", "epochs": 1, "batch_size": 32, "lr": 2e-5, "warmup_ratio": 0.1,
          "scheduler": "linear", "weight_decay": 0.01, "batch_sampler": "default"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="the all-MiniLM-L6-v2 directory (sentence-transformers format)")
    parser.add_argument("--train", required=True, type=Path, help="JSON lines of {query, title}")
    parser.add_argument("--queries", required=True, type=Path, help="JSON list of the test queries' texts")
    parser.add_argument("--titles", required=True, type=Path, help="JSON list of the test products' titles")
    parser.add_argument("--out", required=True, type=Path, help="folder for queries.npy, titles.npy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=0, help="> 0: stop after this many steps")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import numpy as np
    import sentence_transformers
    import torch
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in args.train.read_text().splitlines() if line.strip()]
    queries = json.loads(args.queries.read_text())
    titles = json.loads(args.titles.read_text())
    args.out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    model = SentenceTransformer(args.model, device="cpu")
    train = Dataset.from_dict({"anchor": [r["query"] for r in rows], "positive": [r["title"] for r in rows]})
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(args.out / "trainer"), num_train_epochs=RECIPE["epochs"],
        per_device_train_batch_size=RECIPE["batch_size"], learning_rate=RECIPE["lr"],
        warmup_ratio=RECIPE["warmup_ratio"], lr_scheduler_type=RECIPE["scheduler"],
        weight_decay=RECIPE["weight_decay"], seed=args.seed, max_steps=args.max_steps if args.max_steps > 0 else -1,
        save_strategy="no", logging_steps=1000, report_to="none", use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0)
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train,
                                         loss=MultipleNegativesRankingLoss(model))
    trained = trainer.train()
    train_seconds = time.perf_counter() - started

    q = model.encode(queries, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    t = model.encode(titles, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    np.save(args.out / "queries.npy", q.astype(np.float32))
    np.save(args.out / "titles.npy", t.astype(np.float32))
    shutil.rmtree(args.out / "trainer", ignore_errors=True)
    print(json.dumps({"train_seconds": train_seconds, "total_seconds": time.perf_counter() - started,
                      "steps": int(trained.global_step), "train_pairs": len(rows), "seed": args.seed,
                      "max_seq_length": int(model.max_seq_length), "recipe": RECIPE,
                      "sentence_transformers": sentence_transformers.__version__, "torch": torch.__version__}),
          flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
