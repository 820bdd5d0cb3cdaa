"""DashCLIP training, both stages, resumable.

    python -m embeddings.train --stage 1 --config experiments/configs/embeddings/demo.yaml --data data/demo [k=v ...]
    python -m embeddings.train --stage 2 --config experiments/configs/embeddings/demo.yaml --data data/demo [k=v ...]

Stage 1: ITC + ITM (hard negatives from ITC similarity) on catalog image-title pairs.
Stage 2: PQC between products (the frozen stage-1 multimodal representation through a trainable projection, or the
whole product side with `stage2.train_product_encoder`) and a text-only query encoder started from the stage-1
text encoder, on the relevance labels with explicit and in-batch negatives.

Checkpoints: <checkpoints>/stage<k>/ (final) and <checkpoints>/stage<k>.state/ (in progress: weights, optimizer
state, step), safetensors + JSON, written atomically. A killed run resumes from the state folder and ends with the
weights an uninterrupted run would have (data order and negative sampling derive from (seed, epoch, step)).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from embeddings import data as D
from embeddings.loss import clamp_temperature, itc_loss, itm_loss, pqc_loss, sample_hard_negatives
from embeddings.model import DashClip, ModelConfig, build_model, load_checkpoint, load_tokenizer, save_checkpoint, tokenize
from experiments.config import add_config_args, config_from_args, config_to_dict


@dataclass(frozen=True)
class Stage1Config:
    epochs: int = 3
    batch_size: int = 64
    lr: float = 2e-4
    warmup_steps: int = 20
    itm: bool = True  # image-text matching with hard negatives, on top of ITC


@dataclass(frozen=True)
class Stage2Config:
    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-4
    warmup_steps: int = 20
    init_from: Literal["stage1", "offshelf"] = "stage1"  # "offshelf": stage 2 alone, for the ablation
    negatives: int = 2  # explicit negative queries per product
    positive_labels: tuple[int, ...] = (2,)
    negative_labels: tuple[int, ...] = (0, 1)
    negative_weights: tuple[float, ...] = (0.75, 0.25)  # sampling ratio between the negative label types
    in_batch_negatives: bool = True
    train_product_encoder: bool = True  # False: product side frozen, only product_proj trained (fast, weaker)


@dataclass(frozen=True)
class EmbeddingConfig:
    name: str = "demo"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    weight_decay: float = 0.02
    freeze_word_embeddings: bool = True  # the 30k-row vocabulary tables dominate the optimizer step otherwise
    heldout_query_share: float = 0.2
    heldout_product_share: float = 0.1
    skip_corrupt_images: bool = False
    checkpoint_every: int = 50  # steps between resumable checkpoints
    max_steps: int = 0  # stop after this many steps (0: no limit); the state folder stays for a resume
    checkpoints: str = ""  # default: <data>/embeddings/checkpoints
    threads: int = 0  # torch threads (0: torch's default)

    def validate(self) -> None:
        from experiments.config import ConfigError

        if not 0 <= self.heldout_query_share < 1 or not 0 <= self.heldout_product_share < 1:
            raise ConfigError("EmbeddingConfig: heldout shares must be in [0, 1)")
        if len(self.stage2.negative_labels) != len(self.stage2.negative_weights):
            raise ConfigError("EmbeddingConfig: 'stage2.negative_weights' needs one weight per negative label")
        if set(self.stage2.positive_labels) & set(self.stage2.negative_labels):
            raise ConfigError("EmbeddingConfig: a label cannot be both positive and negative in stage2")


def checkpoint_dir(cfg: EmbeddingConfig, data_dir: Path) -> Path:
    return Path(cfg.checkpoints) if cfg.checkpoints else Path(data_dir) / "embeddings" / "checkpoints"


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ----------------------------------------------------------------------------------------------------------------
# resumable state: weights + optimizer tensors in safetensors, counters in JSON


def _optimizer_tensors(model: DashClip, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    names = {p: n for n, p in model.named_parameters()}
    out = {}
    for p, state in opt.state.items():
        for key, value in state.items():
            out[f"{names[p]}::{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def _restore_optimizer(model: DashClip, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        name, slot = key.split("::")
        opt.state[params[name]][slot] = value


class Run:
    """One training stage's loop bookkeeping: optimizer, schedule, state saving and resuming."""

    def __init__(self, model: DashClip, params: list[torch.nn.Parameter], cfg: EmbeddingConfig, stage: int,
                 lr: float, warmup: int, total_steps: int, ckpt: Path, fingerprint: str):
        self.model, self.cfg, self.stage = model, cfg, stage
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        self.base_lr, self.warmup, self.total = lr, warmup, total_steps
        self.state_dir, self.final_dir = ckpt / f"stage{stage}.state", ckpt / f"stage{stage}"
        self.step, self.history = 0, []
        self.fingerprint = fingerprint

    def resume(self) -> bool:
        meta_file = self.state_dir / "model_config.json"
        if not meta_file.is_file():
            return False
        meta = json.loads(meta_file.read_text())
        if meta.get("train_fingerprint") != self.fingerprint:
            raise ValueError(f"{self.state_dir} holds a stage-{self.stage} run of another config or data; "
                             f"delete it to start over")
        weights = load_file(str(self.state_dir / "model.safetensors"))
        self.model.load_state_dict(weights, strict=True)
        _restore_optimizer(self.model, self.opt, load_file(str(self.state_dir / "train_state.safetensors")))
        self.step, self.history = meta["step"], meta["history"]
        return True

    def save_state(self) -> None:
        save_checkpoint(self.model, self.model.cfg, self.state_dir, extra_tensors=_optimizer_tensors(self.model, self.opt),
                        extra_json={"step": self.step, "history": self.history, "train_fingerprint": self.fingerprint})

    def update(self, loss: torch.Tensor) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, self.total, self.base_lr, self.warmup)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():  # BLIP keeps the temperatures in a sane range
            clamp_temperature(self.model.temp)
            clamp_temperature(self.model.pqc_temp)
        self.step += 1

    def end_step(self, record: dict, bar, steps_per_epoch: int, log) -> None:
        """After an update: history, progress bar, the epoch's MLflow metrics, resumable state, max_steps."""
        self.history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record.get('pqc', record.get('itc', 0.0)):.3f}")
        if self.step % steps_per_epoch == 0 and log:
            log(self, self.step // steps_per_epoch, steps_per_epoch)
        if self.step % self.cfg.checkpoint_every == 0 or self.step == self.total:
            self.save_state()
        if self.cfg.max_steps and self.cfg.max_steps <= self.step < self.total:
            self.save_state()
            bar.close()
            raise StopTraining(f"stopped at step {self.step} (max_steps); resume by running again")

    def finish(self) -> Path:
        save_checkpoint(self.model, self.model.cfg, self.final_dir, extra_json={"stage": self.stage, "history": self.history})
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return self.final_dir


def _trainable(model: DashClip, modules: list[torch.nn.Module], cfg: EmbeddingConfig) -> list[torch.nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(True)
    if cfg.freeze_word_embeddings:
        for enc in (model.text_encoder, model.query_encoder):
            enc.embeddings.word_embeddings.weight.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def _fingerprint(cfg: EmbeddingConfig, stage: int, n_examples: int) -> str:
    import hashlib

    run_control = ("max_steps", "checkpoints", "checkpoint_every", "threads")  # do not change the result
    relevant = {k: v for k, v in config_to_dict(cfg).items() if k not in run_control}
    spec = json.dumps({"cfg": relevant, "stage": stage, "n": n_examples}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# stage 1: ITC + ITM on image-title pairs


def train_stage1(cfg: EmbeddingConfig, data_dir: Path, progress: bool = True, log=None) -> Path:
    if cfg.model.modalities == "text":
        raise ValueError("stage 1 aligns images and titles; a text-only catalog (model.modalities=text) starts at "
                         "stage 2 with stage2.init_from=offshelf")
    s1 = cfg.stage1
    catalog = D.load_catalog(data_dir, cfg.model.image_size, skip_corrupt_images=cfg.skip_corrupt_images)
    relevance = D.load_relevance(data_dir, catalog, D.load_queries(data_dir))
    holdout = D.make_holdout(catalog, relevance, data_dir, cfg.heldout_query_share, cfg.heldout_product_share, cfg.seed)
    train_idx = np.flatnonzero(holdout.train_products)
    tokenizer = load_tokenizer(cfg.model)
    ids, mask = tokenize(tokenizer, catalog.titles, cfg.model.max_title_len)
    title_code = np.unique(np.array(catalog.titles), return_inverse=True)[1]  # equal titles are not negatives

    model = build_model(cfg.model, seed=cfg.seed)
    params = _trainable(model, [model.vision_model, model.text_encoder, model.vision_proj, model.text_proj,
                                model.itm_head], cfg)
    params.append(model.temp)
    model.temp.requires_grad_(True)
    steps_per_epoch = math.ceil(len(train_idx) / s1.batch_size)
    total = steps_per_epoch * s1.epochs
    ckpt = checkpoint_dir(cfg, data_dir)
    run = Run(model, params, cfg, 1, s1.lr, s1.warmup_steps, total, ckpt, _fingerprint(cfg, 1, len(train_idx)))
    resumed = run.resume()
    model.train()
    bar = tqdm(total=total, initial=run.step, desc="stage 1", unit="step", disable=not progress)
    while run.step < total:
        epoch, k = divmod(run.step, steps_per_epoch)
        order = np.random.default_rng([cfg.seed, 1, epoch]).permutation(train_idx)
        b = order[k * s1.batch_size : (k + 1) * s1.batch_size]
        width = int(mask[b].sum(1).max())
        bid, bmask, px = ids[b, :width], mask[b, :width], catalog.pixels[b]
        image_embeds, image_feat = model.encode_image(px)
        _, text_feat = model.encode_text(bid, bmask)
        itc = itc_loss(image_feat, text_feat, model.temp)
        loss, terms = itc.loss, {"itc": itc.loss.item()}
        if s1.itm:
            same = torch.from_numpy(title_code[b][:, None] == title_code[b][None, :])
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + run.step)
            neg_text, neg_image = sample_hard_negatives(itc.sim_i2t, itc.sim_t2i, generator=gen, same_item=same)
            pos = model.itm_logits(model.encode_multimodal(bid, bmask, image_embeds))
            # negatives: each image with a hard-negative title, each title with a hard-negative image  [2B, L]
            neg = model.itm_logits(model.encode_multimodal(
                torch.cat([bid[neg_text], bid]), torch.cat([bmask[neg_text], bmask]),
                torch.cat([image_embeds, image_embeds[neg_image]])))
            itm = itm_loss(pos, neg)
            loss = loss + itm.loss
            terms.update(itm=itm.loss.item(), itm_acc=float(itm.accuracy))
        run.update(loss)
        terms["temp"] = model.temp.item()
        run.end_step({"step": run.step, **terms}, bar, steps_per_epoch, log)
    bar.close()
    if resumed:
        print(f"stage 1 resumed and finished at step {run.step}")
    return run.finish()


class StopTraining(RuntimeError):
    """max_steps reached before the end: the state folder holds everything needed to resume."""


# ----------------------------------------------------------------------------------------------------------------
# stage 2: PQC between products and queries


@torch.no_grad()
def product_hidden_all(model: DashClip, catalog: D.Catalog, ids: torch.Tensor, mask: torch.Tensor,
                       batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """[N, H] product representations before product_proj, for every catalog row."""
    model.eval()
    out = []
    for s in tqdm(range(0, len(catalog), batch_size), desc="products", disable=not progress):
        sl = slice(s, s + batch_size)
        width = int(mask[sl].sum(1).max())
        px = None if catalog.pixels is None else catalog.pixels[sl]
        out.append(model.product_hidden(ids[sl, :width], mask[sl, :width], px))
    return torch.cat(out)


def stage2_inputs(cfg: EmbeddingConfig, data_dir: Path):
    catalog = D.load_catalog(data_dir, cfg.model.image_size, with_images=cfg.model.modalities != "text",
                             skip_corrupt_images=cfg.skip_corrupt_images)
    queries = D.load_queries(data_dir)
    relevance = D.load_relevance(data_dir, catalog, queries)
    holdout = D.make_holdout(catalog, relevance, data_dir, cfg.heldout_query_share, cfg.heldout_product_share, cfg.seed)
    return catalog, queries, relevance, holdout


def load_stage2_start(cfg: EmbeddingConfig, data_dir: Path) -> DashClip:
    if cfg.stage2.init_from == "offshelf" or cfg.model.modalities == "text":
        model = build_model(cfg.model, seed=cfg.seed)
    else:
        stage1 = checkpoint_dir(cfg, data_dir) / "stage1"
        if not (stage1 / "model.safetensors").is_file():
            raise FileNotFoundError(f"stage 2 starts from a stage-1 checkpoint: {stage1} not found "
                                    f"(run --stage 1 first, or set stage2.init_from=offshelf)")
        model, _ = load_checkpoint(stage1, expected_cfg=cfg.model)
        model.cfg = dataclasses.replace(model.cfg, product_input=cfg.model.product_input)
    model.start_stage2()
    return model


def train_stage2(cfg: EmbeddingConfig, data_dir: Path, progress: bool = True, log=None, out_name: str = "stage2") -> Path:
    s2 = cfg.stage2
    catalog, queries, relevance, holdout = stage2_inputs(cfg, data_dir)
    train_pids = set(catalog.product_ids[holdout.train_products].tolist())
    rel = relevance[~relevance.query_id.isin(holdout.heldout_queries) & relevance.product_id.isin(train_pids)]
    sampler = D.PairSampler(rel, s2.positive_labels, s2.negative_labels, s2.negative_weights, s2.negatives, cfg.seed)
    if len(sampler) == 0:
        raise ValueError(f"{data_dir}: no positive relevance pairs (labels {s2.positive_labels}) to train stage 2 on")
    tokenizer = load_tokenizer(cfg.model)
    p_ids, p_mask = tokenize(tokenizer, catalog.titles, cfg.model.max_title_len)
    q_ids, q_mask = tokenize(tokenizer, queries.query_text.tolist(), cfg.model.max_query_len)
    p_row = {int(p): i for i, p in enumerate(catalog.product_ids)}
    q_row = {int(q): i for i, q in enumerate(queries.query_id)}

    model = load_stage2_start(cfg, data_dir)
    modules = [model.query_encoder, model.query_proj, model.product_proj]
    if s2.train_product_encoder:
        modules += [model.vision_model, model.text_encoder]
    params = _trainable(model, modules, cfg) + [model.pqc_temp]
    model.pqc_temp.requires_grad_(True)
    cached = None if s2.train_product_encoder else product_hidden_all(model, catalog, p_ids, p_mask, progress=progress)
    steps_per_epoch = math.ceil(len(sampler) / s2.batch_size)
    total = steps_per_epoch * s2.epochs
    ckpt = checkpoint_dir(cfg, data_dir)
    run = Run(model, params, cfg, 2, s2.lr, s2.warmup_steps, total, ckpt, _fingerprint(cfg, 2, len(sampler)))
    run.final_dir, run.state_dir = ckpt / out_name, ckpt / f"{out_name}.state"
    run.resume()
    model.train()
    bar = tqdm(total=total, initial=run.step, desc="stage 2", unit="step", disable=not progress)
    batches, batches_epoch = None, -1
    while run.step < total:
        epoch, k = divmod(run.step, steps_per_epoch)
        if epoch != batches_epoch:  # each epoch's batches derive from (seed, epoch): a resume skips k of them
            sampler.rng = np.random.default_rng([cfg.seed, 2, epoch])
            batches, batches_epoch = itertools.islice(sampler.epoch(s2.batch_size), k, None), epoch
        pids, pos_q, neg_q, neg_mask = next(batches)
        prow = torch.tensor([p_row[int(p)] for p in pids])
        if cached is not None:
            product = F.normalize(model.product_proj(cached[prow]), dim=-1)
        else:
            px = None if catalog.pixels is None else catalog.pixels[prow]
            product = model.encode_product(p_ids[prow], p_mask[prow], px)
        rows = torch.tensor([q_row.get(int(q), 0) for q in np.concatenate([pos_q, neg_q.ravel()])])  # 0: padding
        width = int(q_mask[rows].sum(1).max())
        qemb = model.encode_query(q_ids[rows, :width], q_mask[rows, :width])  # [B + B*N, D]
        B, N = neg_q.shape
        out = pqc_loss(product, qemb[:B], qemb[B:].reshape(B, N, -1) if N else None, model.pqc_temp,
                       in_batch_negatives=s2.in_batch_negatives, neg_mask=torch.from_numpy(neg_mask) if N else None,
                       pos_query_ids=torch.from_numpy(pos_q), neg_query_ids=torch.from_numpy(neg_q) if N else None)
        run.update(out.loss)
        run.end_step({"step": run.step, "pqc": out.loss.item(), "pqc_acc": float(out.accuracy),
                      "temp": model.pqc_temp.item()}, bar, steps_per_epoch, log)
    bar.close()
    return run.finish()


# ----------------------------------------------------------------------------------------------------------------
# entry point with MLflow tracking


def _epoch_logger(stage: int):
    import mlflow

    def log(run: Run, epoch: int, steps: int) -> None:
        recent = run.history[-steps:]
        keys = [k for k in recent[0] if k != "step"]
        mlflow.log_metrics({f"train/{k}": float(np.mean([h[k] for h in recent])) for k in keys}, step=epoch)

    return log


def _loss_plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in history[0] if k not in ("step", "temp")]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        ax.plot([h["step"] for h in history], [h[k] for h in history], label=k, lw=1)
    ax.set_xlabel("step")
    ax.legend()
    ax.set_title("training curves")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embeddings.train", description=__doc__.split("\n")[0])
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument("--data", type=Path, required=True, help="data/<name> with raw/ tables")
    parser.add_argument("--out-name", default=None, help="checkpoint folder name (default stage1 / stage2)")
    parser.add_argument("--no-progress", action="store_true")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(EmbeddingConfig, args)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    import mlflow

    from experiments.tracking import flatten, setup_mlflow

    setup_mlflow("dashclip-embeddings")
    started = time.perf_counter()
    name = args.out_name or f"stage{args.stage}"
    with mlflow.start_run(run_name=f"{cfg.name}/{name}"):
        mlflow.set_tags({"stage": args.stage, "data": str(args.data)})
        mlflow.log_params({k: str(v)[:250] for k, v in flatten(config_to_dict(cfg)).items()})
        log = _epoch_logger(args.stage)
        if args.stage == 1:
            final = train_stage1(cfg, args.data, progress=not args.no_progress, log=log)
        else:
            final = train_stage2(cfg, args.data, progress=not args.no_progress, log=log, out_name=name)
        history = json.loads((final / "model_config.json").read_text())["history"]
        plot = final / "training_curves.png"
        _loss_plot(history, plot)
        mlflow.log_artifact(str(plot))
        mlflow.log_metric("train/seconds", time.perf_counter() - started)
        mlflow.log_param("checkpoint", str(final))
    print(f"stage {args.stage}: {len(history)} steps in {time.perf_counter() - started:.0f} s -> {final}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
