"""DashCLIP benchmarks: training and precompute speed on a world (stage 1 on real grocery photos:
benchmarks/grocery_bench.py).

    python -m benchmarks.embeddings_bench [--data data/demo] [--config experiments/configs/embeddings/demo.yaml]

speed: stage-1 and stage-2 training examples/s from the difference of two runs of the real training loop (k1 and
k2 steps), so loading the catalog and building the model do not count; precompute products/s (the multimodal
product encoder over the whole catalog) and the wall time of a whole precompute (products + queries + writing).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.common import record  # noqa: E402
from core.config import load_config  # noqa: E402
from embeddings.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from embeddings.config import EmbeddingConfig, set_threads  # noqa: E402
from embeddings.data import load_catalog  # noqa: E402
from embeddings.encode import embed_products  # noqa: E402
from embeddings.model import build_model  # noqa: E402
from embeddings.precompute import precompute  # noqa: E402
from embeddings.pretrained import load_tokenizer  # noqa: E402
from embeddings.train import StopTraining, train_stage1, train_stage2  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _timed_steps(cfg, data: Path, stage: int, steps: int, ckpt: Path) -> float:
    run_cfg = dataclasses.replace(cfg, max_steps=steps, checkpoints=str(ckpt), checkpoint_every=10**9, eval_every=0)
    shutil.rmtree(ckpt / f"stage{stage}.state", ignore_errors=True)
    started = time.perf_counter()
    try:
        (train_stage1 if stage == 1 else train_stage2)(run_cfg, data, progress=False)
    except StopTraining:
        pass
    return time.perf_counter() - started


def speed(args) -> int:
    cfg = load_config(EmbeddingConfig, args.config)
    set_threads(cfg.threads)
    work = Path(tempfile.mkdtemp(prefix="emb-bench-"))
    try:
        # stage 2 starts from a stage-1 checkpoint; its speed does not depend on the weights
        save_checkpoint(build_model(cfg.model, seed=cfg.seed), cfg.model, work / "stage1", extra_json={"stage": 1})
        k1, k2 = args.steps
        for stage, batch in ((1, cfg.stage1.batch_size), (2, cfg.stage2.batch_size)):
            t1, t2 = _timed_steps(cfg, args.data, stage, k1, work), _timed_steps(cfg, args.data, stage, k2, work)
            record("embeddings", f"stage{stage}_train_examples_per_s", round((k2 - k1) * batch / (t2 - t1), 1),
                   "examples/s", cfg.name, batch_size=batch, steps=[k1, k2], seconds=[round(t1, 2), round(t2, 2)],
                   threads=torch.get_num_threads())
        model, _ = load_checkpoint(work / "stage1")
        catalog = load_catalog(args.data, cfg.model.image_size)
        started = time.perf_counter()
        embed_products(model, catalog, load_tokenizer(cfg.model), cfg.model.max_title_len)
        seconds = time.perf_counter() - started
        record("embeddings", "precompute_products_per_s", round(len(catalog) / seconds, 1), "products/s", cfg.name,
               products=len(catalog), threads=torch.get_num_threads())
        started = time.perf_counter()
        precompute(args.data, work / "stage1", version="bench-tmp", progress=False)
        record("embeddings", "precompute_all_seconds", round(time.perf_counter() - started, 2), "s", cfg.name)
        shutil.rmtree(Path(args.data) / "embeddings" / "bench-tmp", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embeddings_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "configs" / "embeddings" / "demo.yaml")
    parser.add_argument("--steps", type=int, nargs=2, default=(5, 25), metavar=("K1", "K2"))
    args = parser.parse_args(argv)
    if not (args.data / "raw" / "products").is_dir():
        print(f"no world at {args.data} (python -m experiments.simulate ... --out {args.data})")
        return 1
    speed(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
