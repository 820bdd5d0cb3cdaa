"""DashCLIP benchmarks: training and precompute speed on a world (stage 1 on real grocery photos:
benchmarks/grocery_bench.py).

    python -m benchmarks.embeddings_bench [--data data/demo] [--config experiments/configs/embeddings/demo.yaml]
    python -m benchmarks.embeddings_bench --ddp [--processes 1 2] [--steps K1 K2]   # data-parallel scaling only

speed: stage-1 and stage-2 training examples/s from the difference of two runs of the real training loop (k1 and
k2 steps), so loading the catalog and building the model do not count; precompute products/s (the multimodal
product encoder over the whole catalog) and the wall time of a whole precompute (products + queries + writing).

ddp (--ddp): stage-2 training on P processes for each P of --processes, started as torchrun starts them (the
environment names the process group; DistributedDataParallel over gloo, the configured batch the global batch,
1 torch thread per process; P = 1 is the plain single-process loop). `ddp_stage2_examples_per_s`: global
examples/s, from the difference of a k1- and a k2-step run in the same processes (start-up, data loading and the
frozen-product cache cancel out); fields processes, threads_per_process, batch_size (global), steps, seconds.
`ddp_stage2_scaling`: examples/s of the most processes over that of one process (target: 2 processes at least
1.6x one), with `efficiency` = scaling / processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from benchmarks.common import record  # noqa: E402
from core.config import load_config  # noqa: E402
from embeddings.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from embeddings.config import EmbeddingConfig, set_threads  # noqa: E402
from embeddings.data import load_catalog  # noqa: E402
from embeddings.distributed import Ranks, close, init_from_env  # noqa: E402
from embeddings.encode import embed_products  # noqa: E402
from embeddings.model import build_model  # noqa: E402
from embeddings.precompute import precompute  # noqa: E402
from embeddings.pretrained import load_tokenizer  # noqa: E402
from embeddings.train import StopTraining, train_stage1, train_stage2  # noqa: E402
from tests.helpers.ports import free_ports  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _timed_steps(cfg, data: Path, stage: int, steps: int, ckpt: Path, ranks: Ranks = Ranks()) -> float:
    run_cfg = dataclasses.replace(cfg, max_steps=steps, checkpoints=str(ckpt), checkpoint_every=10**9, eval_every=0)
    if ranks.is_main:
        shutil.rmtree(ckpt / f"stage{stage}.state", ignore_errors=True)
    started = time.perf_counter()
    try:
        final = (train_stage1 if stage == 1 else train_stage2)(run_cfg, data, progress=False, ranks=ranks)
    except StopTraining:
        pass
    else:  # a run whose epochs hold fewer steps ends early, and a rate from it would be inflated
        done = len(json.loads((final / "model_config.json").read_text())["history"])
        if done != steps:
            raise RuntimeError(f"stage {stage} on {data} ran {done} steps, not {steps}: its epochs hold fewer "
                               f"(lower --steps, or use a larger world)")
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


def _ddp_worker(rank: int, processes: int, port: int, cfg: EmbeddingConfig, data: Path, work: Path,
                steps: tuple[int, int]) -> None:
    """One of `processes` ranks (spawned as torchrun would start them: its environment names the group): train
    stage 2 for k1, then k2 steps; rank 0 writes the two wall times to work/seconds.json."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(processes), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    set_threads(1)
    ranks = init_from_env()
    try:
        seconds = [_timed_steps(cfg, data, 2, k, work, ranks) for k in steps]
    finally:
        close(ranks)
    if ranks.is_main:
        (work / "seconds.json").write_text(json.dumps(seconds))


def ddp(args) -> int:
    """Stage-2 examples/s with 1 thread per process, for each process count of --processes; and the scaling."""
    cfg = dataclasses.replace(load_config(EmbeddingConfig, args.config), threads=1)
    work = Path(tempfile.mkdtemp(prefix="emb-ddp-bench-"))
    try:
        save_checkpoint(build_model(cfg.model, seed=cfg.seed), cfg.model, work / "stage1", extra_json={"stage": 1})
        k1, k2 = args.steps
        rates = {}
        for processes in args.processes:
            port = free_ports()[0]
            mp.start_processes(_ddp_worker, args=(processes, port, cfg, args.data, work, (k1, k2)),
                               nprocs=processes, start_method="spawn")
            t1, t2 = json.loads((work / "seconds.json").read_text())
            rates[processes] = (k2 - k1) * cfg.stage2.batch_size / (t2 - t1)
            record("embeddings", "ddp_stage2_examples_per_s", round(rates[processes], 1), "examples/s", cfg.name,
                   processes=processes, threads_per_process=1, batch_size=cfg.stage2.batch_size, steps=[k1, k2],
                   seconds=[round(t1, 2), round(t2, 2)], cpus=os.cpu_count())
        most = max(rates)
        if 1 in rates and most > 1:
            scaling = rates[most] / rates[1]
            record("embeddings", "ddp_stage2_scaling", round(scaling, 3), "x", cfg.name, processes=most,
                   efficiency=round(scaling / most, 3), target=1.6 if most == 2 else None, cpus=os.cpu_count())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.embeddings_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "configs" / "embeddings" / "demo.yaml")
    parser.add_argument("--steps", type=int, nargs=2, default=(5, 25), metavar=("K1", "K2"))
    parser.add_argument("--ddp", action="store_true", help="only the torchrun stage-2 scaling (see the docstring)")
    parser.add_argument("--processes", type=int, nargs="+", default=(1, 2), help="torchrun process counts (--ddp)")
    args = parser.parse_args(argv)
    if not (args.data / "raw" / "products").is_dir():
        print(f"no world at {args.data} (python -m experiments.simulate ... --out {args.data})")
        return 1
    return ddp(args) if args.ddp else speed(args)


if __name__ == "__main__":
    sys.exit(main())
