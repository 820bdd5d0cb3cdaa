"""DashCLIP training, both stages, resumable.

    python -m embeddings.train --stage 1 --config experiments/configs/embeddings/demo.yaml --data data/demo [k=v ...]
    python -m embeddings.train --stage 2 --config experiments/configs/embeddings/demo.yaml --data data/demo [k=v ...]

Stage 1: ITC (optionally with BLIP's momentum encoders, feature queue and soft targets) + ITM with hard negatives
drawn from the ITC similarities, on catalog image-title pairs of the training products.
Stage 2: PQC between products (the frozen stage-1 multimodal representation through a trainable projection, or the
whole product side with `stage2.train_product_encoder`) and a text-only query encoder started from the stage-1
title encoder, on the relevance labels of the training queries, with explicit and in-batch negatives.

Checkpoints: <checkpoints>/<name>/ (final; name stage1 / stage2 or --out-name) and <checkpoints>/<name>.state/
(in progress: weights, optimizer moments, momentum encoders and queue, RNG state in safetensors; step, history and
a fingerprint of the config in JSON; no pickle), each written atomically. A killed run resumes from the state
folder and ends with the weights an uninterrupted run would have: data order, negative sampling and hard-negative
draws derive from (seed, epoch, step), not from a stream that a restart would reset.
One MLflow run per invocation (experiment dashclip-embeddings): the config, losses and validation metrics per epoch,
the training curves as a PNG; a run that raises is marked FAILED, one stopped by max_steps KILLED.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.config import add_config_args, config_from_args, config_to_dict
from core.tracking import flatten, setup_mlflow
from embeddings.checkpoint import (load_checkpoint, load_train_state, read_checkpoint_meta, save_checkpoint,
                                   save_train_state, train_fingerprint)
from embeddings.config import EmbeddingConfig, Stage1Config, set_threads
from embeddings.data import (Catalog, Holdout, PairSampler, load_catalog, load_queries, load_relevance, make_holdout,
                             stage2_inputs)
from embeddings.encode import product_hidden_all
from embeddings.loss import SoftTargets, clamp_temperature, itc_loss, itm_loss, pqc_loss, sample_hard_negatives
from embeddings.metrics import auc_2v0, linear_probe
from embeddings.model import DashClip, build_model
from embeddings.plots import plot_history
from embeddings.preprocess import tokenize
from embeddings.pretrained import load_tokenizer


class StopTraining(RuntimeError):
    """max_steps reached before the end: the state folder holds everything needed to resume."""


def checkpoint_dir(cfg: EmbeddingConfig, data_dir: Path) -> Path:
    return Path(cfg.checkpoints) if cfg.checkpoints else Path(data_dir) / "embeddings" / "checkpoints"


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ----------------------------------------------------------------------------------------------------------------
# the loop: optimizer, schedule, resumable state (embeddings.checkpoint), StopTraining at max_steps


class Run:
    """One training stage's loop bookkeeping: optimizer, schedule, state saving and resuming.

    extra_state() -> {name: tensor} and restore_extra({name: tensor}) let a stage keep more than the model in the
    resumable state (stage 1: the momentum encoders and the feature queue)."""

    def __init__(self, model: DashClip, params: list[torch.nn.Parameter], cfg: EmbeddingConfig, stage: int,
                 lr: float, warmup: int, total_steps: int, ckpt: Path, name: str, fingerprint: str,
                 extra_state: Callable[[], dict] | None = None, restore_extra: Callable[[dict], None] | None = None):
        self.model, self.cfg, self.stage = model, cfg, stage
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        self.base_lr, self.warmup, self.total = lr, warmup, total_steps
        self.state_dir, self.final_dir = ckpt / f"{name}.state", ckpt / name
        self.step, self.history, self.evals = 0, [], []
        self.fingerprint = fingerprint
        self.extra_state, self.restore_extra = extra_state, restore_extra

    def resume(self) -> bool:
        state = load_train_state(self.model, self.opt, self.state_dir, self.fingerprint, self.stage)
        if state is None:
            return False
        meta, extra = state
        if self.restore_extra:
            self.restore_extra(extra)
        self.step, self.history, self.evals = meta["step"], meta["history"], meta.get("evals", [])
        return True

    def save_state(self) -> None:
        save_train_state(self.model, self.opt, self.state_dir,
                         {"step": self.step, "history": self.history, "evals": self.evals,
                          "train_fingerprint": self.fingerprint},
                         extra=self.extra_state() if self.extra_state else None)

    def update(self, loss: torch.Tensor) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, self.total, self.base_lr, self.warmup)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():  # BLIP keeps the temperatures in [0.001, 0.5]
            clamp_temperature(self.model.temp)
            clamp_temperature(self.model.pqc_temp)
        self.step += 1

    def finish(self, **extra_json) -> Path:
        save_checkpoint(self.model, self.model.cfg, self.final_dir,
                        extra_json={"stage": self.stage, "history": self.history, "evals": self.evals, **extra_json})
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


def _loop(run: Run, steps_per_epoch: int, step_fn: Callable[[int, int], dict], desc: str, progress: bool,
          on_epoch: Callable[[Run, int], None] | None) -> None:
    """The shared loop: step_fn(epoch, k) does one update and returns its named terms. Saves resumable state every
    checkpoint_every steps; with max_steps, saves and raises StopTraining (a simulated kill)."""
    cfg = run.cfg
    bar = tqdm(total=run.total, initial=run.step, desc=desc, unit="step", disable=not progress)
    try:
        while run.step < run.total:
            epoch, k = divmod(run.step, steps_per_epoch)
            terms = step_fn(epoch, k)
            run.history.append({"step": run.step, **terms})
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.3f}")
            if run.step % steps_per_epoch == 0 and on_epoch:
                on_epoch(run, epoch + 1)
            if run.step % cfg.checkpoint_every == 0 and run.step < run.total:
                run.save_state()
            if cfg.max_steps and run.step >= cfg.max_steps and run.step < run.total:
                run.save_state()
                raise StopTraining(f"{desc}: stopped at step {run.step} of {run.total} (max_steps); run the same "
                                   f"command again to resume from {run.state_dir}")
    finally:
        bar.close()


# ----------------------------------------------------------------------------------------------------------------
# validation during training (training path: observed labels only, never the hidden tables)


def _validation_rows(holdout: Holdout, seed: int, n_train: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """Catalog rows for a quick aisle probe: a seeded sample of training products and every held-out one."""
    train = np.flatnonzero(holdout.train_products)
    train = np.sort(np.random.default_rng([seed, 99]).choice(train, size=min(n_train, len(train)), replace=False))
    return train, np.flatnonzero(~holdout.train_products)


def validate_products(model: DashClip, catalog: Catalog, ids, mask, holdout: Holdout, seed: int) -> dict:
    """Aisle accuracy of a linear probe on the product representation of held-out products."""
    train, held = _validation_rows(holdout, seed)
    if not len(train) or not len(held):
        return {}
    hidden = product_hidden_all(model, catalog, ids, mask, rows=np.concatenate([train, held])).numpy()
    predicted = linear_probe(hidden[: len(train)], catalog.aisles[train], hidden[len(train):], iters=50)
    return {"val/aisle_acc": float((predicted == catalog.aisles[held]).mean())}


# ----------------------------------------------------------------------------------------------------------------
# stage 1: ITC + ITM on image-title pairs


class Momentum:
    """BLIP's momentum encoders (EMA copies of the unimodal encoders and projections) and feature queue."""

    PARTS = ("vision_model", "vision_proj", "text_encoder", "text_proj")

    def __init__(self, model: DashClip, s1: Stage1Config, seed: int):
        self.model, self.m = model, s1.momentum
        self.parts = {name: copy.deepcopy(getattr(model, name)).requires_grad_(False) for name in self.PARTS}
        dim = model.vision_proj.out_features
        gen = torch.Generator().manual_seed(seed)
        self.image_queue = F.normalize(torch.randn(s1.queue_size, dim, generator=gen), dim=-1)  # [K, D]
        self.text_queue = F.normalize(torch.randn(s1.queue_size, dim, generator=gen), dim=-1)  # [K, D]
        self.ptr = 0

    @torch.no_grad()
    def update(self) -> None:
        for name, part in self.parts.items():
            for pm, p in zip(part.parameters(), getattr(self.model, name).parameters()):
                pm.mul_(self.m).add_(p.detach(), alpha=1 - self.m)

    @torch.no_grad()
    def features(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.parts["vision_model"](pixel_values=pixels).last_hidden_state[:, 0]
        text = self.parts["text_encoder"](input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        return (F.normalize(self.parts["vision_proj"](image), dim=-1),
                F.normalize(self.parts["text_proj"](text), dim=-1))  # [B, D] each

    @torch.no_grad()
    def enqueue(self, image_feat_m: torch.Tensor, text_feat_m: torch.Tensor) -> None:
        size = len(self.image_queue)
        if not size:
            return
        idx = (self.ptr + torch.arange(len(image_feat_m))) % size
        self.image_queue[idx], self.text_queue[idx] = image_feat_m, text_feat_m
        self.ptr = int((self.ptr + len(image_feat_m)) % size)

    def state(self) -> dict[str, torch.Tensor]:
        out = {f"momentum.{name}.{k}": v for name, part in self.parts.items() for k, v in part.state_dict().items()}
        return {**out, "image_queue": self.image_queue, "text_queue": self.text_queue,
                "queue_ptr": torch.tensor(self.ptr)}

    def restore(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, part in self.parts.items():
            prefix = f"momentum.{name}."
            part.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        self.image_queue, self.text_queue = tensors["image_queue"].clone(), tensors["text_queue"].clone()
        self.ptr = int(tensors["queue_ptr"])


def stage1_step(model: DashClip, s1: Stage1Config, mom: Momentum | None, bid, bmask, px, same: torch.Tensor,
                gen: torch.Generator) -> tuple[torch.Tensor, dict, tuple | None]:
    """One stage-1 loss on a batch: ITC (+ momentum queue / soft targets) and ITM with hard negatives."""
    image_embeds, image_feat = model.encode_image(px)  # [B, 1+P, Hv], [B, D]
    _, text_feat = model.encode_text(bid, bmask)  # [B, D]
    extra, feats_m = {}, None
    if mom is not None:
        feats_m = mom.features(px, bid, bmask)
        image_all = torch.cat([feats_m[0], mom.image_queue])  # [B+K, D]
        text_all = torch.cat([feats_m[1], mom.text_queue])  # [B+K, D]
        extra = {"image_feat_all": image_all, "text_feat_all": text_all}
        if s1.alpha:
            with torch.no_grad():
                extra["soft_targets"] = SoftTargets(feats_m[0] @ text_all.T / model.temp,
                                                    feats_m[1] @ image_all.T / model.temp, s1.alpha)
    itc = itc_loss(image_feat, text_feat, model.temp, **extra)
    loss, terms = itc.loss, {"itc": itc.loss.item()}
    multimodal = model.encode_multimodal(bid, bmask, image_embeds) if (s1.itm or s1.product_itc) else None
    if s1.product_itc:
        product_feat = F.normalize(model.product_proj(multimodal[:, 0]), dim=-1)  # [B, D] from C_i
        pitc = (itc_loss(product_feat, text_feat, model.temp).loss + itc_loss(product_feat, image_feat, model.temp).loss) / 2
        loss = loss + pitc
        terms["product_itc"] = pitc.item()
    if s1.itm:
        neg_text, neg_image = sample_hard_negatives(itc.sim_i2t, itc.sim_t2i, generator=gen, same_item=same,
                                                    uniform_share=s1.itm_random_negatives)
        pos = model.itm_logits(multimodal)  # [B, 2]
        # each image with a hard-negative title, then each title with a hard-negative image  -> [2B, 2]
        neg = model.itm_logits(model.encode_multimodal(
            torch.cat([bid[neg_text], bid]), torch.cat([bmask[neg_text], bmask]),
            torch.cat([image_embeds, image_embeds[neg_image]])))
        itm = itm_loss(pos, neg)
        loss = loss + itm.loss
        terms.update(itm=itm.loss.item(), itm_acc=float(itm.accuracy))
    terms["loss"] = loss.item()
    return loss, terms, feats_m


def train_stage1(cfg: EmbeddingConfig, data_dir: Path, progress: bool = True, log=None, out_name: str = "stage1") -> Path:
    """Stage 1 on the training products' image-title pairs; returns the final checkpoint folder."""
    if cfg.model.modalities == "text":
        raise ValueError("stage 1 aligns images and titles; a catalog without images (model.modalities=text) starts "
                         "at stage 2: run --stage 2 with stage2.init_from=offshelf")
    s1 = cfg.stage1
    catalog = load_catalog(data_dir, cfg.model.image_size, skip_corrupt_images=cfg.skip_corrupt_images)
    relevance = load_relevance(data_dir, catalog, load_queries(data_dir))
    holdout = make_holdout(catalog, relevance, data_dir, cfg.heldout_query_share, cfg.heldout_product_share, cfg.seed)
    train_idx = np.flatnonzero(holdout.train_products)
    if len(train_idx) < 2:
        raise ValueError(f"{data_dir}: stage 1 needs at least 2 training products, found {len(train_idx)}")
    tokenizer = load_tokenizer(cfg.model)
    ids, mask = tokenize(tokenizer, catalog.titles, cfg.model.max_title_len)
    title_code = np.unique(np.array(catalog.titles), return_inverse=True)[1]  # equal titles are not negatives

    model = build_model(cfg.model, seed=cfg.seed)
    modules = [model.vision_model, model.text_encoder, model.vision_proj, model.text_proj, model.itm_head]
    params = _trainable(model, modules + ([model.product_proj] if s1.product_itc else []), cfg)
    model.temp.requires_grad_(True)
    params.append(model.temp)
    mom = Momentum(model, s1, cfg.seed) if s1.momentum else None
    steps_per_epoch = math.ceil(len(train_idx) / s1.batch_size)
    run = Run(model, params, cfg, 1, s1.lr, s1.warmup_steps, steps_per_epoch * s1.epochs, checkpoint_dir(cfg, data_dir),
              out_name, train_fingerprint(cfg, 1, len(train_idx)),
              extra_state=mom.state if mom else None, restore_extra=mom.restore if mom else None)
    run.resume()
    model.train()

    def step(epoch: int, k: int) -> dict:
        order = np.random.default_rng([cfg.seed, 1, epoch]).permutation(train_idx)  # the same after a resume
        b = torch.from_numpy(order[k * s1.batch_size : (k + 1) * s1.batch_size])
        width = int(mask[b].sum(1).max())
        same = torch.from_numpy(title_code[b][:, None] == title_code[b][None, :])  # [B, B]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + run.step)
        loss, terms, feats_m = stage1_step(model, s1, mom, ids[b, :width], mask[b, :width], catalog.pixels[b], same, gen)
        run.update(loss)
        if mom is not None:
            mom.update()
            mom.enqueue(*feats_m)
        terms["temp"] = model.temp.item()
        return terms

    def on_epoch(run: Run, epoch: int) -> None:
        row = {"epoch": epoch}
        if cfg.eval_every and (epoch % cfg.eval_every == 0 or epoch == s1.epochs):
            row.update(validate_products(model, catalog, ids, mask, holdout, cfg.seed))
        run.evals.append(row)
        if log:
            log(run, epoch, steps_per_epoch)

    _loop(run, steps_per_epoch, step, "stage 1", progress, on_epoch)
    return run.finish(product_proj_trained=s1.product_itc)


# ----------------------------------------------------------------------------------------------------------------
# stage 2: PQC between products and queries


def load_stage2_start(cfg: EmbeddingConfig, data_dir: Path) -> DashClip:
    """Stage 2's starting point: the stage-1 checkpoint (or the untrained model for init_from=offshelf or a catalog
    without images), with the query side and product_proj restarted from the product encoders."""
    if cfg.stage2.init_from == "offshelf" or cfg.model.modalities == "text":
        model = build_model(cfg.model, seed=cfg.seed)
    else:
        stage1 = checkpoint_dir(cfg, data_dir) / "stage1"
        if not (stage1 / "model.safetensors").is_file():
            raise FileNotFoundError(f"stage 2 starts from a stage-1 checkpoint: {stage1} not found "
                                    f"(run --stage 1 first, or set stage2.init_from=offshelf)")
        model, _ = load_checkpoint(stage1, expected_cfg=cfg.model)
        model.cfg = dataclasses.replace(model.cfg, product_input=cfg.model.product_input)
        model.start_stage2(keep_product_proj=read_checkpoint_meta(stage1).get("product_proj_trained", False))
        return model
    model.start_stage2()
    return model


def validate_queries(model: DashClip, product_emb: Callable[[np.ndarray], torch.Tensor], q_ids, q_mask, q_row: dict,
                     pairs) -> dict:
    """PQC ranking quality on the held-out queries' labelled pairs: AUC of cos for label 2 vs label 0."""
    pairs = pairs[pairs.label != 1]
    if pairs.label.nunique() < 2:
        return {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        rows = torch.tensor([q_row[int(q)] for q in pairs.query_id])
        q = torch.cat([model.encode_query(q_ids[rows[s : s + 1024]], q_mask[rows[s : s + 1024]])
                       for s in range(0, len(rows), 1024)])
        p = product_emb(pairs.product_id.to_numpy())
    model.train(was_training)
    cos = (p * q).sum(1).numpy()
    return {"val/cos_auc_2v0": auc_2v0(pairs.label.to_numpy(), cos)}


def train_stage2(cfg: EmbeddingConfig, data_dir: Path, progress: bool = True, log=None, out_name: str = "stage2") -> Path:
    """Stage 2 on the training queries' relevance pairs; returns the final checkpoint folder."""
    s2 = cfg.stage2
    catalog, queries, relevance, holdout = stage2_inputs(cfg, data_dir)
    train_pids = catalog.product_ids[holdout.train_products]
    held = relevance.query_id.isin(holdout.heldout_queries)
    rel = relevance[~held & relevance.product_id.isin(train_pids)]
    sampler = PairSampler(rel, s2.positive_labels, s2.negative_labels, s2.negative_weights, s2.negatives, cfg.seed)
    if len(sampler) == 0:
        raise ValueError(f"{data_dir}: no positive relevance pairs (labels {list(s2.positive_labels)}) among the "
                         f"training queries and products to train stage 2 on")
    tokenizer = load_tokenizer(cfg.model)
    p_ids, p_mask = tokenize(tokenizer, catalog.titles, cfg.model.max_title_len)
    q_ids, q_mask = tokenize(tokenizer, queries.query_text.tolist(), cfg.model.max_query_len)
    p_row = {int(p): i for i, p in enumerate(catalog.product_ids)}
    q_row = {int(q): i for i, q in enumerate(queries.query_id)}

    model = load_stage2_start(cfg, data_dir)
    modules = [model.query_encoder, model.query_proj, model.product_proj]
    if s2.train_product_encoder:
        modules += [model.text_encoder] + ([] if catalog.pixels is None else [model.vision_model])
    params = _trainable(model, modules, cfg)
    model.pqc_temp.requires_grad_(True)
    params.append(model.pqc_temp)
    # A frozen product side is encoded once: each step then only projects the cached C_i  [N, H]
    cached = None if s2.train_product_encoder else product_hidden_all(model, catalog, p_ids, p_mask, progress=progress)

    def product_emb(pids: np.ndarray) -> torch.Tensor:
        rows = torch.tensor([p_row[int(p)] for p in pids])
        if cached is not None:
            return F.normalize(model.product_proj(cached[rows]), dim=-1)
        width = int(p_mask[rows].sum(1).max())
        px = None if catalog.pixels is None else catalog.pixels[rows]
        return model.encode_product(p_ids[rows, :width], p_mask[rows, :width], px)

    steps_per_epoch = math.ceil(len(sampler) / s2.batch_size)
    run = Run(model, params, cfg, 2, s2.lr, s2.warmup_steps, steps_per_epoch * s2.epochs, checkpoint_dir(cfg, data_dir),
              out_name, train_fingerprint(cfg, 2, len(sampler)))
    run.resume()
    model.train()
    batches = {"epoch": -1, "it": None}

    def step(epoch: int, k: int) -> dict:
        if batches["epoch"] != epoch:  # each epoch's batches derive from (seed, epoch): a resume skips k of them
            sampler.rng = np.random.default_rng([cfg.seed, 2, epoch])
            batches.update(epoch=epoch, it=itertools.islice(sampler.epoch(s2.batch_size), k, None))
        pids, pos_q, neg_q, neg_mask = next(batches["it"])
        product = product_emb(pids)  # [B, D]
        all_q = np.concatenate([pos_q, neg_q.ravel()])
        rows = torch.tensor([q_row[int(q)] if m else 0 for q, m in  # row 0 stands in for padding (masked out)
                             zip(all_q, np.concatenate([np.ones(len(pos_q), bool), neg_mask.ravel()]))])
        width = int(q_mask[rows].sum(1).max())
        qemb = model.encode_query(q_ids[rows, :width], q_mask[rows, :width])  # [B + B*N, D]
        B, N = neg_q.shape
        out = pqc_loss(product, qemb[:B], qemb[B:].reshape(B, N, -1) if N else None, model.pqc_temp,
                       in_batch_negatives=s2.in_batch_negatives, neg_mask=torch.from_numpy(neg_mask) if N else None,
                       pos_query_ids=torch.from_numpy(pos_q), neg_query_ids=torch.from_numpy(neg_q) if N else None)
        run.update(out.loss)
        return {"loss": out.loss.item(), "pqc": out.loss.item(), "pqc_acc": float(out.accuracy),
                "temp": model.pqc_temp.item()}

    val_pairs = relevance[held]

    def on_epoch(run: Run, epoch: int) -> None:
        row = {"epoch": epoch}
        if cfg.eval_every and (epoch % cfg.eval_every == 0 or epoch == s2.epochs) and len(val_pairs):
            row.update(validate_queries(model, product_emb, q_ids, q_mask, q_row, val_pairs))
        run.evals.append(row)
        if log:
            log(run, epoch, steps_per_epoch)

    _loop(run, steps_per_epoch, step, "stage 2", progress, on_epoch)
    return run.finish()


# ----------------------------------------------------------------------------------------------------------------
# entry point with MLflow tracking


def _epoch_logger(log_metrics: Callable[..., object]) -> Callable[[Run, int, int], None]:
    """Per epoch: the mean training terms of its steps and the validation metrics, through log_metrics."""

    def log(run: Run, epoch: int, steps: int) -> None:
        recent = run.history[-steps:]
        keys = [k for k in recent[0] if k != "step"]
        metrics = {f"train/{k}": float(np.mean([h[k] for h in recent])) for k in keys}
        metrics.update({k: v for k, v in run.evals[-1].items() if k != "epoch"} if run.evals else {})
        log_metrics(metrics, step=epoch)

    return log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embeddings.train", description=__doc__.split("\n")[0])
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument("--data", type=Path, required=True, help="data/<name> with raw/ tables")
    parser.add_argument("--out-name", default=None, help="checkpoint folder name (default stage1 / stage2); e.g. "
                        "stage2_alone, title_only, image_only for the ablations")
    parser.add_argument("--no-progress", action="store_true")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(EmbeddingConfig, args)
    set_threads(cfg.threads)
    import mlflow  # here, not at the top: the training functions run without MLflow (benchmarks, tests)

    setup_mlflow("dashclip-embeddings")
    started = time.perf_counter()
    name = args.out_name or f"stage{args.stage}"
    with mlflow.start_run(run_name=f"{cfg.name}/{name}") as active:
        mlflow.set_tags({"stage": args.stage, "data": str(args.data), "checkpoint_name": name})
        mlflow.log_params({k: str(v)[:250] for k, v in flatten(config_to_dict(cfg)).items()})
        train = train_stage1 if args.stage == 1 else train_stage2
        try:
            final = train(cfg, args.data, progress=not args.no_progress, log=_epoch_logger(mlflow.log_metrics),
                          out_name=name)
        except StopTraining:
            mlflow.end_run(status="KILLED")
            raise
        meta = read_checkpoint_meta(final)
        plot = final.parent / f"{name}_training_curves.png"
        plot_history(meta["history"], meta.get("evals", []), plot)
        mlflow.log_artifact(str(plot))
        seconds = time.perf_counter() - started
        mlflow.log_metrics({"train/seconds": seconds, "train/steps": len(meta["history"])})
        mlflow.set_tag("checkpoint", str(final))
        run_id = active.info.run_id
    last = meta.get("evals", [{}])[-1] if meta.get("evals") else {}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "epoch")
    print(f"stage {args.stage}: {len(meta['history'])} steps in {seconds:.0f} s -> {final}"
          + (f" ({shown})" if shown else "") + f" [mlflow run {run_id}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
