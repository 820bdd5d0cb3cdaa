"""DashCLIP speed on a world: training examples/s per stage and precompute products/s.

    python -m benchmarks.embeddings_bench [--data data/demo] [--config experiments/configs/embeddings/demo.yaml]

Training rates come from the difference of two runs of the real training loop (k1 and k2 steps), so loading the
catalog and building the model do not count. Needs a generated world (make demo, or experiments.simulate).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import record  # noqa: E402
from embeddings import train  # noqa: E402
from embeddings.precompute import precompute  # noqa: E402
from experiments.config import load_config  # noqa: E402


def timed_steps(cfg, data: Path, stage: int, steps: int, ckpt: Path) -> float:
    import dataclasses

    run_cfg = dataclasses.replace(cfg, max_steps=steps, checkpoints=str(ckpt), checkpoint_every=10**9)
    shutil.rmtree(ckpt / f"stage{stage}.state", ignore_errors=True)
    started = time.perf_counter()
    try:
        (train.train_stage1 if stage == 1 else train.train_stage2)(run_cfg, data, progress=False)
    except train.StopTraining:
        pass
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--config", type=Path, default=Path("experiments/configs/embeddings/demo.yaml"))
    parser.add_argument("--steps", type=int, nargs=2, default=(5, 25))
    args = parser.parse_args(argv)
    cfg = load_config(train.EmbeddingConfig, args.config)
    work = Path(tempfile.mkdtemp(prefix="emb-bench-"))
    shutil.copytree(args.data / "embeddings" / "checkpoints" / "stage1", work / "stage1")  # stage 2 starts here
    k1, k2 = args.steps
    for stage, batch in ((1, cfg.stage1.batch_size), (2, cfg.stage2.batch_size)):
        t1, t2 = timed_steps(cfg, args.data, stage, k1, work), timed_steps(cfg, args.data, stage, k2, work)
        record("embeddings", f"stage{stage}_train_examples_per_s", round((k2 - k1) * batch / (t2 - t1), 1),
               "examples/s", cfg.name, batch_size=batch, steps=[k1, k2], seconds=[round(t1, 2), round(t2, 2)])
    # precompute: products through the multimodal encoder, queries through the query encoder
    from embeddings.data import load_catalog
    from embeddings.evaluate import embed_products
    from embeddings.model import load_checkpoint, load_tokenizer

    model, _ = load_checkpoint(work / "stage1")
    catalog = load_catalog(args.data, cfg.model.image_size)
    started = time.perf_counter()
    embed_products(model, catalog, load_tokenizer(cfg.model), cfg.model.max_title_len)
    seconds = time.perf_counter() - started
    record("embeddings", "precompute_products_per_s", round(len(catalog) / seconds, 1), "products/s", cfg.name,
           products=len(catalog))
    started = time.perf_counter()
    out = precompute(args.data, work / "stage1", version="bench", progress=False)
    record("embeddings", "precompute_all_seconds", round(time.perf_counter() - started, 2), "s", cfg.name)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
