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
`max_steps=k` trains k steps at most (the schedule ends there) and finishes like any run: final checkpoint, exit 0.
`stop_at_step=k` simulates a kill instead (state saved, StopTraining raised; tests).
Stage 2 validates on the held-out queries (split by query, printed at the start: data.stage2_split); with
`stage2.keep_best` its final checkpoint holds the best validation's weights (step 0 included) and `stage2.patience`
stops early. The loss is checked against chance (stage2.chance_check_steps): a collapsed encoder warns.
One MLflow run per invocation (experiment dashclip-embeddings): the config, losses and validation metrics per epoch,
the training curves as a PNG; a run that raises is marked FAILED, one stopped by stop_at_step KILLED. The state
folder records the run's id: rerun after a kill (SIGKILL leaves the run RUNNING) or a stop_at_step, the command
continues that run to FINISHED instead of opening a second one (a changed run-control key is tagged rerun/<key>).
One training per checkpoint at a time: a second `embeddings.train` of the same checkpoints folder and name (it would
resume the first one's state folder and write over it) exits 2 with `error: checkpoint ... is in use by another
embeddings.train (pid N) ...`, before it opens an MLflow run (embeddings.checkpoint.exclusive).

    torchrun --nproc_per_node N -m embeddings.train --stage {1,2} ...

runs the same loop data-parallel (embeddings/distributed.py): the configured batch is the global batch, each rank
encodes its share, the losses see the gathered global batch (the one-process loss and gradients), rank 0 alone
writes checkpoints, logs to MLflow and validates.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import itertools
import math
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core.config import ConfigError, add_config_args, config_from_args, config_to_dict, exit_on
from core.tracking import flatten, setup_mlflow
from embeddings.checkpoint import (RUN_CONTROL, CheckpointError, check_checkpoint, exclusive, find_train_state,
                                   load_checkpoint, load_train_state, read_checkpoint_meta, remove_train_state,
                                   save_checkpoint, save_train_state, train_fingerprint)
from embeddings.config import EmbeddingConfig, Stage1Config, Stage2Config, set_threads
from embeddings.data import (Catalog, DataError, Holdout, PairSampler, Stage2Batch, load_catalog, load_queries,
                             load_relevance, make_holdout, stage2_inputs, stage2_split)
from embeddings.distributed import Ranks, barrier, close, data_parallel, gather, init_from_env, on_main, shard
from embeddings.encode import product_hidden_all
from embeddings.loss import (SoftTargets, clamp_temperature, itc_loss, itm_loss, l2sp_loss, pqc_loss,
                             sample_hard_negatives)
from embeddings.metrics import auc_2v0, judged_ndcg, linear_probe
from embeddings.model import DashClip, build_model
from embeddings.plots import plot_history
from embeddings.preprocess import tokenize
from embeddings.pretrained import load_tokenizer
from feature_store.schema import SchemaError


class StopTraining(RuntimeError):
    """stop_at_step reached before the end (a simulated kill): the state folder holds everything to resume."""


def checkpoint_dir(cfg: EmbeddingConfig, data_dir: Path) -> Path:
    return Path(cfg.checkpoints) if cfg.checkpoints else Path(data_dir) / "embeddings" / "checkpoints"


def planned_steps(cfg: EmbeddingConfig, steps_per_epoch: int, epochs: int) -> int:
    """The run's length: its epochs, or max_steps when that is shorter."""
    total = steps_per_epoch * epochs
    return min(total, cfg.max_steps) if cfg.max_steps else total


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ----------------------------------------------------------------------------------------------------------------
# the loop: optimizer, schedule, resumable state (embeddings.checkpoint), StopTraining at stop_at_step


class Run:
    """One training stage's loop bookkeeping: optimizer, schedule, state saving and resuming.

    params: a list of parameters (all at `lr`) or of optimizer groups {"params": [...], "lr": base rate}; every
    group follows the same warm-up and decay from its own base rate.
    extra_state() -> {name: tensor} and restore_extra({name: tensor}) let a stage keep more than the model in the
    resumable state (stage 1: the momentum encoders and the feature queue; stage 2: the best weights so far).
    Under torchrun every rank resumes from the same state folder and only rank 0 writes (the others wait).
    state_json: more JSON for the state folder (the entry point's MLflow run, which a rerun continues)."""

    def __init__(self, model: DashClip, params: list, cfg: EmbeddingConfig, stage: int,
                 lr: float, warmup: int, total_steps: int, ckpt: Path, name: str, fingerprint: str,
                 extra_state: Callable[[], dict] | None = None, restore_extra: Callable[[dict], None] | None = None,
                 ranks: Ranks = Ranks(), state_json: dict | None = None):
        self.model, self.cfg, self.stage, self.ranks = model, cfg, stage, ranks
        groups = params if params and isinstance(params[0], dict) else [{"params": params, "lr": lr}]
        self.opt = torch.optim.AdamW([{"params": g["params"], "lr": g["lr"]} for g in groups], lr=lr,
                                     weight_decay=cfg.weight_decay)
        self.base_lrs = [g["lr"] for g in groups]
        self.base_lr, self.warmup, self.total = lr, warmup, total_steps
        self.state_dir, self.final_dir = ckpt / f"{name}.state", ckpt / name
        self.step, self.history, self.evals = 0, [], []
        self.fingerprint = fingerprint
        self.extra_state, self.restore_extra = extra_state, restore_extra
        self.state_json = state_json or {}

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
        if self.ranks.is_main:
            save_train_state(self.model, self.opt, self.state_dir,
                             {**self.state_json, "step": self.step, "history": self.history, "evals": self.evals,
                              "train_fingerprint": self.fingerprint},
                             extra=self.extra_state() if self.extra_state else None)
        barrier(self.ranks)

    def update(self, loss: torch.Tensor) -> None:
        for group, base in zip(self.opt.param_groups, self.base_lrs):
            group["lr"] = lr_at(self.step, self.total, base, self.warmup)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():  # BLIP keeps the temperatures in [0.001, 0.5]
            clamp_temperature(self.model.temp)
            clamp_temperature(self.model.pqc_temp)
        self.step += 1

    def finish(self, **extra_json) -> Path:
        if self.ranks.is_main:
            save_checkpoint(self.model, self.model.cfg, self.final_dir,
                            extra_json={"stage": self.stage, "history": self.history, "evals": self.evals,
                                        **extra_json})
            remove_train_state(self.state_dir)
        barrier(self.ranks)
        return self.final_dir


def _trainable(model: DashClip, modules: list[torch.nn.Module], cfg: EmbeddingConfig) -> list[torch.nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(True)
    if cfg.freeze_word_embeddings:
        for enc in (model.text_encoder, model.query_encoder):
            if enc is not None:  # a shared query tower has no query encoder
                enc.embeddings.word_embeddings.weight.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def _loop(run: Run, steps_per_epoch: int, step_fn: Callable[[int, int], dict], desc: str, progress: bool,
          on_epoch: Callable[[Run, int], None] | None, after_step: Callable[[Run], bool] | None = None) -> None:
    """The shared loop: step_fn(epoch, k) does one update and returns its named terms; on_epoch(run, epoch) runs at
    the end of every epoch (and of a run that max_steps ends mid-epoch); after_step(run) -> True ends the run early
    (early stopping). Saves resumable state every checkpoint_every steps; at stop_at_step, saves and raises
    StopTraining (a simulated kill)."""
    cfg = run.cfg
    bar = tqdm(total=run.total, initial=run.step, desc=desc, unit="step", disable=not progress)
    try:
        while run.step < run.total:
            epoch, k = divmod(run.step, steps_per_epoch)
            terms = step_fn(epoch, k)
            run.history.append({"step": run.step, **terms})
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.3f}")
            stop = after_step(run) if after_step else False
            if (run.step % steps_per_epoch == 0 or run.step == run.total) and on_epoch:
                on_epoch(run, math.ceil(run.step / steps_per_epoch))
            if stop:
                break
            if run.step % cfg.checkpoint_every == 0 and run.step < run.total:
                run.save_state()
            if cfg.stop_at_step and run.step >= cfg.stop_at_step and run.step < run.total:
                run.save_state()
                raise StopTraining(f"{desc}: stopped at step {run.step} of {run.total} (stop_at_step); run the same "
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
    if not len(train) or not len(held) or catalog.aisles is None:
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
        text = self.model.pool(self.parts["text_encoder"](input_ids=ids, attention_mask=mask).last_hidden_state, mask)
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
                gen: torch.Generator, ranks: Ranks = Ranks()) -> tuple[torch.Tensor, dict, tuple | None]:
    """One stage-1 loss on a batch: ITC (+ momentum queue / soft targets) and ITM with hard negatives.

    bid, bmask, px, same: the global batch. Under torchrun each rank encodes its shard and gathers the features
    (embeddings.distributed), so ITC's negatives, the soft targets and the hard-negative draws (the same generator
    on every rank) span the global batch; ITM encodes this rank's pairs, a negative image coming from whichever
    rank encoded it. Returns the global loss, its terms and the global momentum features (for the queue)."""
    part = shard(len(bid), ranks)
    mine = part.rows
    image_embeds, image_feat = model.encode_image(px[mine])  # [b, 1+P, Hv], [b, D]
    _, text_feat = model.encode_text(bid[mine], bmask[mine])  # [b, D]
    image_feat, text_feat = gather(image_feat, part, ranks), gather(text_feat, part, ranks)  # [B, D]
    extra, feats_m = {}, None
    if mom is not None:
        with torch.no_grad():
            feats_m = tuple(gather(f, part, ranks) for f in mom.features(px[mine], bid[mine], bmask[mine]))
        image_all = torch.cat([feats_m[0], mom.image_queue])  # [B+K, D]
        text_all = torch.cat([feats_m[1], mom.text_queue])  # [B+K, D]
        extra = {"image_feat_all": image_all, "text_feat_all": text_all}
        if s1.alpha:
            with torch.no_grad():
                extra["soft_targets"] = SoftTargets(feats_m[0] @ text_all.T / model.temp,
                                                    feats_m[1] @ image_all.T / model.temp, s1.alpha)
    itc = itc_loss(image_feat, text_feat, model.temp, **extra)
    loss, terms = itc.loss, {"itc": itc.loss.item()}
    multimodal = model.encode_multimodal(bid[mine], bmask[mine], image_embeds) if (s1.itm or s1.product_itc) else None
    if s1.product_itc:
        product_feat = gather(F.normalize(model.product_proj(multimodal[:, 0]), dim=-1), part, ranks)  # [B, D]
        pitc = (itc_loss(product_feat, text_feat, model.temp).loss + itc_loss(product_feat, image_feat, model.temp).loss) / 2
        loss = loss + pitc
        terms["product_itc"] = pitc.item()
    if s1.itm:
        neg_text, neg_image = sample_hard_negatives(itc.sim_i2t, itc.sim_t2i, generator=gen, same_item=same,
                                                    uniform_share=s1.itm_random_negatives)  # [B] each, global
        neg_text, neg_image = neg_text[mine], neg_image[mine]  # this rank's rows' draws
        all_embeds = gather(image_embeds, part, ranks)  # [B, 1+P, Hv]: a negative image may be another rank's
        pos = gather(model.itm_logits(multimodal), part, ranks)  # [B, 2]
        # each image with a hard-negative title, then each title with a hard-negative image  -> [2b, 2]
        neg = model.itm_logits(model.encode_multimodal(
            torch.cat([bid[neg_text], bid[mine]]), torch.cat([bmask[neg_text], bmask[mine]]),
            torch.cat([image_embeds, all_embeds[neg_image]])))
        b = len(neg_text)
        neg = torch.cat([gather(neg[:b], part, ranks), gather(neg[b:], part, ranks)])  # [2B, 2], one process's order
        itm = itm_loss(pos, neg)
        loss = loss + itm.loss
        terms.update(itm=itm.loss.item(), itm_acc=float(itm.accuracy))
    terms["loss"] = loss.item()
    return loss, terms, feats_m


def train_stage1(cfg: EmbeddingConfig, data_dir: Path, progress: bool = True, log=None, out_name: str = "stage1",
                 ranks: Ranks = Ranks(), state_json: dict | None = None) -> Path:
    """Stage 1 on the training products' image-title pairs; returns the final checkpoint folder. Under torchrun
    (ranks: embeddings.distributed) stage1.batch_size is the global batch, split across the ranks. state_json:
    see Run."""
    if cfg.model.modalities == "text":
        raise ConfigError("stage 1 aligns images and titles; a catalog without images (model.modalities=text) "
                          "starts at stage 2: run --stage 2 with stage2.init_from=offshelf")
    s1 = cfg.stage1
    catalog = load_catalog(data_dir, cfg.model.image_size, skip_corrupt_images=cfg.skip_corrupt_images)
    relevance = load_relevance(data_dir, catalog, load_queries(data_dir))
    holdout = make_holdout(catalog, relevance, data_dir, cfg.heldout_query_share, cfg.heldout_product_share, cfg.seed)
    train_idx = np.flatnonzero(holdout.train_products)
    if len(train_idx) < 2:
        raise DataError(f"{data_dir}: stage 1 needs at least 2 training products, found {len(train_idx)}")
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
    run = Run(model, params, cfg, 1, s1.lr, s1.warmup_steps, planned_steps(cfg, steps_per_epoch, s1.epochs),
              checkpoint_dir(cfg, data_dir),
              out_name, train_fingerprint(cfg, 1, len(train_idx)),
              extra_state=mom.state if mom else None, restore_extra=mom.restore if mom else None, ranks=ranks,
              state_json=state_json)
    run.resume()
    model.train()
    loss_fn = data_parallel(model, functools.partial(stage1_step, model, s1, mom, ranks=ranks), ranks)

    def step(epoch: int, k: int) -> dict:
        order = np.random.default_rng([cfg.seed, 1, epoch]).permutation(train_idx)  # the same after a resume
        b = torch.from_numpy(order[k * s1.batch_size : (k + 1) * s1.batch_size])
        width = int(mask[b].sum(1).max())
        same = torch.from_numpy(title_code[b][:, None] == title_code[b][None, :])  # [B, B]
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + run.step)
        loss, terms, feats_m = loss_fn(ids[b, :width], mask[b, :width], catalog.pixels[b], same, gen)
        run.update(loss)
        if mom is not None:
            mom.update()
            mom.enqueue(*feats_m)
        terms["temp"] = model.temp.item()
        return terms

    def on_epoch(run: Run, epoch: int) -> None:
        row = {"epoch": epoch}
        if cfg.eval_every and (epoch % cfg.eval_every == 0 or run.step == run.total):
            row.update(on_main(lambda: validate_products(model, catalog, ids, mask, holdout, cfg.seed), ranks))
        run.evals.append(row)
        if log:
            log(run, epoch, steps_per_epoch)

    _loop(run, steps_per_epoch, step, "stage 1", progress and ranks.is_main, on_epoch)
    return run.finish(product_proj_trained=s1.product_itc)


# ----------------------------------------------------------------------------------------------------------------
# stage 2: PQC between products and queries


def stage1_start(cfg: EmbeddingConfig, data_dir: Path) -> Path | None:
    """The stage-1 checkpoint stage 2 starts from, checked against the config (check_checkpoint: no weight read);
    None when stage 2 starts from the untrained model (init_from=offshelf, or a catalog without images)."""
    if cfg.stage2.init_from == "offshelf" or cfg.model.modalities == "text":
        return None
    stage1 = checkpoint_dir(cfg, data_dir) / "stage1"
    if not (stage1 / "model_config.json").is_file():
        raise CheckpointError(f"stage 2 starts from a stage-1 checkpoint: {stage1} not found "
                              f"(run --stage 1 first, or set stage2.init_from=offshelf)")
    check_checkpoint(stage1, cfg.model)
    return stage1


def load_stage2_start(cfg: EmbeddingConfig, data_dir: Path) -> DashClip:
    """Stage 2's starting point: the stage-1 checkpoint (or the untrained model for init_from=offshelf or a catalog
    without images), with the query side (none for a shared query tower) and product_proj restarted from the
    product encoders."""
    stage1 = stage1_start(cfg, data_dir)
    if stage1 is None:
        model = build_model(cfg.model, seed=cfg.seed)
    else:
        model, _ = load_checkpoint(stage1, expected_cfg=cfg.model)
        model.cfg = dataclasses.replace(model.cfg, product_input=cfg.model.product_input,
                                        query_tower=cfg.model.query_tower)
        model.start_stage2(keep_product_proj=read_checkpoint_meta(stage1).get("product_proj_trained", False))
        return model
    model.start_stage2()
    return model


def validate_queries(model: DashClip, product_emb: Callable[[np.ndarray], torch.Tensor], q_ids, q_mask, q_row: dict,
                     pairs) -> dict:
    """Stage 2's quality on the held-out queries' labelled pairs: AUC of cos for label 2 vs label 0
    (val/cos_auc_2v0) and nDCG@10 of each query's labelled products ranked by cos, gains 2^label - 1
    (val/ndcg_at_10)."""
    if pairs.empty:
        return {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        rows = torch.tensor([q_row[int(q)] for q in pairs.query_id])
        q = torch.cat([model.encode_query(q_ids[rows[s : s + 1024]], q_mask[rows[s : s + 1024]])
                       for s in range(0, len(rows), 1024)])
        pids = pairs.product_id.to_numpy()
        p = torch.cat([product_emb(pids[s : s + 1024]) for s in range(0, len(pids), 1024)])
    model.train(was_training)
    cos = (p * q).sum(1).numpy()
    labels = pairs.label.to_numpy()
    out = {"val/ndcg_at_10": judged_ndcg(pairs.query_id.to_numpy(), 2.0 ** labels - 1, cos)}
    if {0, 2} <= set(labels.tolist()):
        out["val/cos_auc_2v0"] = auc_2v0(labels, cos)
    return out


class BestWeights:
    """Early stopping: the best validation so far by one metric (higher is better), the trained tensors at that
    point, and how many validations in a row have not beaten it. Part of the resumable state."""

    def __init__(self, model: DashClip, params: list[torch.nn.Parameter], metric: str, patience: int):
        self.names = [n for n, p in model.named_parameters() if any(p is q for q in params)]
        self.model, self.metric, self.patience = model, metric, patience
        self.value, self.step, self.stale, self.tensors = -math.inf, -1, 0, {}

    def offer(self, row: dict, step: int) -> bool:
        """Record a validation row; True when patience has run out."""
        value = row.get(self.metric)
        if value is None or not np.isfinite(value):
            return False
        if value > self.value:
            params = dict(self.model.named_parameters())
            self.value, self.step, self.stale = float(value), step, 0
            self.tensors = {n: params[n].detach().clone() for n in self.names}
        else:
            self.stale += 1
        return bool(self.patience) and self.stale >= self.patience

    @torch.no_grad()
    def restore(self) -> None:
        params = dict(self.model.named_parameters())
        for name, tensor in self.tensors.items():
            params[name].copy_(tensor)

    def state(self) -> dict[str, torch.Tensor]:
        return {**{f"best.{n}": t for n, t in self.tensors.items()},
                "best_meta": torch.tensor([self.value, self.step, self.stale], dtype=torch.float64)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        value, step, stale = tensors["best_meta"].tolist()
        self.value, self.step, self.stale = value, int(step), int(stale)
        self.tensors = {k.removeprefix("best."): v.clone() for k, v in tensors.items() if k.startswith("best.")}


def stage2_loss(model: DashClip, s2: Stage2Config, batch: Stage2Batch,
                product_emb: Callable[[np.ndarray], torch.Tensor], q_ids: torch.Tensor, q_mask: torch.Tensor,
                q_row: dict, penalty: Callable[[], torch.Tensor] | None = None,
                ranks: Ranks = Ranks()) -> tuple[torch.Tensor, dict]:
    """PQC on one global batch (and the query -> product direction with s2.symmetric) -> (loss, its terms).

    product_emb(product ids) -> [n, D] embeddings; q_ids, q_mask: every query's tokens, row q_row[query id];
    penalty() -> a term added to the loss (L2-SP, stage2.l2sp).
    Under torchrun each rank encodes its shard's products, queries and hard-negative products and gathers them
    (embeddings.distributed): the loss, its in-batch negatives, padding masks and duplicate-query masks are then
    those of one process on the global batch."""
    pids, pos_q, neg_q, neg_mask, neg_p, neg_p_mask = batch
    B, N = neg_q.shape
    part = shard(B, ranks)
    mine = part.rows
    product = gather(product_emb(pids[mine]), part, ranks)  # [B, D]
    all_q = np.concatenate([pos_q, neg_q.ravel()])
    rows = torch.tensor([q_row[int(q)] if m else 0 for q, m in  # row 0 stands in for padding (masked out)
                         zip(all_q, np.concatenate([np.ones(len(pos_q), bool), neg_mask.ravel()]))])
    width = int(q_mask[rows].sum(1).max())  # the global batch's, so a shard pads as one process does
    rows = torch.cat([rows[:B][mine], rows[B:].reshape(B, N)[mine].reshape(-1)])  # this rank's [b + b*N]
    qemb = model.encode_query(q_ids[rows, :width], q_mask[rows, :width])  # [b + b*N, D]
    b = len(qemb) // (1 + N)
    pos_emb = gather(qemb[:b], part, ranks)  # [B, D]
    neg_emb = gather(qemb[b:].reshape(b, N, -1), part, ranks) if N else None  # [B, N, D]
    out = pqc_loss(product, pos_emb, neg_emb, model.pqc_temp,
                   in_batch_negatives=s2.in_batch_negatives, neg_mask=torch.from_numpy(neg_mask) if N else None,
                   pos_query_ids=torch.from_numpy(pos_q), neg_query_ids=torch.from_numpy(neg_q) if N else None)
    loss, terms, chance = out.loss, {"pqc": out.loss.item()}, out.chance
    if s2.symmetric:  # query -> product: each positive query against the batch's products (+ its own negatives)
        M = neg_p.shape[1]
        hard = None
        if M:  # only the real negative products are encoded; padding rows stay zero and are masked out
            where = torch.from_numpy(np.flatnonzero(neg_p_mask[mine].ravel()))
            emb = (product_emb(neg_p[mine].ravel()[where.numpy()]) if len(where)
                   else product.new_zeros(0, product.shape[1]))
            hard = gather(product.new_zeros(b * M, product.shape[1]).index_copy(0, where, emb).reshape(b, M, -1),
                          part, ranks)  # [B, M, D]
        # ids = the queries: a batch product that is another positive of the same query is not its negative.
        # (The positive queries are sliced and gathered anew rather than reusing pos_emb: on one process this keeps
        # the order in which backward sums their gradients, and so the weights, bit for bit what they were.)
        back = pqc_loss(gather(qemb[:b], part, ranks), product, hard, model.pqc_temp, in_batch_negatives=True,
                        neg_mask=torch.from_numpy(neg_p_mask) if M else None,
                        pos_query_ids=torch.from_numpy(pos_q))
        loss, chance = (out.loss + back.loss) / 2, (out.chance + back.chance) / 2
        terms["qpc"] = back.loss.item()
    terms["contrastive"] = loss.item()  # what the chance check compares with the chance level
    if penalty is not None:
        term = penalty()
        loss = loss + term
        terms["l2sp"] = term.item()
    return loss, {**terms, "pqc_acc": float(out.accuracy), "chance": float(chance)}


def train_stage2(cfg: EmbeddingConfig, data_dir: Path, progress: bool = True, log=None, out_name: str = "stage2",
                 ranks: Ranks = Ranks(), state_json: dict | None = None) -> Path:
    """Stage 2 on the training queries' relevance pairs; returns the final checkpoint folder. Under torchrun
    (ranks: embeddings.distributed) stage2.batch_size is the global batch, split across the ranks; validation runs
    on rank 0 and its row (so keep_best and early stopping) reaches every rank. state_json: see Run."""
    s2 = cfg.stage2
    progress = progress and ranks.is_main
    stage1_start(cfg, data_dir)  # a missing or mismatched stage-1 checkpoint is named before any data is read
    catalog, queries, relevance, holdout = stage2_inputs(cfg, data_dir)
    split = stage2_split(relevance, catalog, holdout, cfg.heldout_query_share, s2.exclude_heldout_products)
    if ranks.is_main:
        print(split.summary, flush=True)
    sampler = PairSampler(split.train, s2.positive_labels, s2.negative_labels, s2.negative_weights, s2.negatives,
                          cfg.seed, negative_products=s2.negative_products)
    if len(sampler) == 0:
        raise DataError(f"{data_dir}: no positive relevance pairs (labels {list(s2.positive_labels)}) among the "
                        f"training queries and products to train stage 2 on")
    tokenizer = load_tokenizer(cfg.model)
    p_ids, p_mask = tokenize(tokenizer, catalog.titles, cfg.model.max_title_len)
    q_ids, q_mask = tokenize(tokenizer, queries.query_text.tolist(), cfg.model.max_query_len)
    p_row = {int(p): i for i, p in enumerate(catalog.product_ids)}
    q_row = {int(q): i for i, q in enumerate(queries.query_id)}

    model = load_stage2_start(cfg, data_dir)
    shared = model.cfg.query_tower == "shared"  # one siamese tower: queries and titles through the same weights
    if shared:
        encoders, projections = [model.text_encoder], [model.product_proj]
    else:
        encoders, projections = [model.query_encoder], [model.query_proj, model.product_proj]
        if s2.train_product_encoder:
            encoders += [model.text_encoder] + ([] if catalog.pixels is None else [model.vision_model])
    params = _trainable(model, encoders + projections, cfg)
    model.pqc_temp.requires_grad_(True)
    params.append(model.pqc_temp)
    encoder_params = [p for m in encoders for p in m.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in encoder_params] if s2.l2sp else []  # the starting point, before resume
    groups = params
    if s2.encoder_lr:
        new = [p for p in params if not any(p is q for q in encoder_params)]
        groups = [{"params": encoder_params, "lr": s2.encoder_lr}, {"params": new, "lr": s2.lr}]
    # A frozen product side is encoded once: each step then only projects the cached C_i  [N, H]
    frozen_products = not (s2.train_product_encoder or shared)
    cached = product_hidden_all(model, catalog, p_ids, p_mask, progress=progress) if frozen_products else None

    def product_emb(pids: np.ndarray) -> torch.Tensor:
        rows = torch.tensor([p_row[int(p)] for p in pids])
        if cached is not None:
            return F.normalize(model.product_proj(cached[rows]), dim=-1)
        width = int(p_mask[rows].sum(1).max())
        px = None if catalog.pixels is None else catalog.pixels[rows]
        return model.encode_product(p_ids[rows, :width], p_mask[rows, :width], px)

    steps_per_epoch = math.ceil(len(sampler) / s2.batch_size)
    best = BestWeights(model, params, s2.select_metric, s2.patience) if s2.keep_best else None
    run = Run(model, groups, cfg, 2, s2.lr, s2.warmup_steps, planned_steps(cfg, steps_per_epoch, s2.epochs),
              checkpoint_dir(cfg, data_dir), out_name, train_fingerprint(cfg, 2, len(sampler)),
              extra_state=best.state if best else None, restore_extra=best.load if best else None, ranks=ranks,
              state_json=state_json)
    resumed = run.resume()
    model.train()
    batches = {"epoch": -1, "it": None}

    penalty = (lambda: l2sp_loss(encoder_params, anchors, s2.l2sp)) if s2.l2sp else None
    ddp_loss = data_parallel(model, functools.partial(stage2_loss, model, s2, product_emb=product_emb, q_ids=q_ids,
                                                      q_mask=q_mask, q_row=q_row, penalty=penalty, ranks=ranks), ranks)

    def step(epoch: int, k: int) -> dict:
        if batches["epoch"] != epoch:  # each epoch's batches derive from (seed, epoch): a resume skips k of them
            sampler.rng = np.random.default_rng([cfg.seed, 2, epoch])
            batches.update(epoch=epoch, it=itertools.islice(sampler.epoch(s2.batch_size), k, None))
        loss, terms = ddp_loss(next(batches["it"]))  # the global batch: every rank draws the same one
        run.update(loss)
        return {"loss": loss.item(), **terms, "temp": model.pqc_temp.item()}

    def validate(run: Run) -> dict:
        row = {"epoch": run.step / steps_per_epoch, "step": run.step}
        row.update(on_main(lambda: validate_queries(model, product_emb, q_ids, q_mask, q_row, split.valid), ranks))
        run.evals.append(row)
        return row

    if best is not None and not resumed and len(split.valid):  # the starting point competes too
        best.offer(validate(run), 0)

    def after_step(run: Run) -> bool:
        if ranks.is_main:  # one warning per run, not one per rank
            _check_chance(run, s2.chance_check_steps)
        epoch_end = run.step % steps_per_epoch == 0 or run.step == run.total
        epoch = math.ceil(run.step / steps_per_epoch)
        due = (s2.eval_every_steps and run.step % s2.eval_every_steps == 0) or (
            epoch_end and cfg.eval_every and (epoch % cfg.eval_every == 0 or run.step == run.total))
        if not due or not len(split.valid):
            return False
        row = validate(run)
        return best.offer(row, run.step) if best is not None else False

    def on_epoch(run: Run, epoch: int) -> None:
        if log:
            log(run, epoch, steps_per_epoch)

    _loop(run, steps_per_epoch, step, "stage 2", progress, on_epoch, after_step)
    extra = {"split": split.summary}
    if best is not None and best.tensors:
        best.restore()
        extra.update(best_step=best.step, best_metric={s2.select_metric: best.value})
        if ranks.is_main:
            print(f"stage 2: keeping the weights of step {best.step} ({s2.select_metric} {best.value:.4f})", flush=True)
    return run.finish(**extra)


def _check_chance(run: Run, at_step: int, window: int = 10) -> None:
    """Warn once, at step at_step, if the mean contrastive loss of the last steps is still at chance (>= 98% of the mean
    log(1 + negatives)): the encoders score every candidate alike."""
    if not at_step or run.step != at_step:
        return
    recent = run.history[-window:]
    loss, chance = np.mean([h["contrastive"] for h in recent]), np.mean([h["chance"] for h in recent])
    if loss >= 0.98 * chance:
        message = (f"stage 2: after {run.step} steps the loss is still at chance ({loss:.3f} vs log(1 + negatives) = "
                   f"{chance:.3f}): the encoders score every candidate alike. Collapsed embeddings? (a pretrained "
                   f"sentence encoder read by its first token, model.pooling=cls, maps every text to nearly one "
                   f"vector); or a learning rate too small")
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        print(f"WARNING: {message}", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# entry point with MLflow tracking


def _epoch_logger(log_metrics: Callable[..., object],
                  logged: frozenset[int] = frozenset()) -> Callable[[Run, int, int], None]:
    """Per epoch: the mean training terms of its steps and the validation metrics, through log_metrics; not for the
    epochs in `logged` (a continued run logged them before its kill, and the resume replays them identically)."""

    def log(run: Run, epoch: int, steps: int) -> None:
        if epoch in logged:
            return
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
    ranks = init_from_env()  # torchrun: one process per rank; otherwise one process, no process group
    try:
        if ranks.is_main:
            return _train_logged(args, cfg, ranks)
        train = train_stage1 if args.stage == 1 else train_stage2
        train(cfg, args.data, progress=False, out_name=args.out_name or f"stage{args.stage}", ranks=ranks)
        return 0
    finally:
        close(ranks)


def _interrupted_run(state_dir: Path, params: dict[str, str]) -> str | None:
    """The MLflow run of the interrupted training whose state folder this is, to be continued rather than left
    stopped short (RUNNING: SIGKILL cannot be caught; KILLED: stop_at_step): None if the store lacks it, it ended,
    or it was logged with another config (params other than run control); a RUNNING one of another config is
    marked KILLED, which it was."""
    import mlflow

    found = find_train_state(state_dir)
    run_id = read_checkpoint_meta(found).get("mlflow_run_id") if found is not None else None
    if not run_id:
        return None
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:  # deleted, or logged to another store
        return None
    if run.info.status not in ("RUNNING", "KILLED"):
        return None
    if all(run.data.params.get(k) == v for k, v in params.items() if k.split(".")[0] not in RUN_CONTROL):
        return run_id
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, "KILLED")
    return None


def _train_logged(args: argparse.Namespace, cfg: EmbeddingConfig, ranks: Ranks) -> int:
    """The training run with its MLflow run (rank 0's job under torchrun). It holds the checkpoint's lock
    (embeddings.checkpoint.exclusive) from before the run opens, so a second training of the same checkpoint is
    refused before it logs anything. A rerun after a kill continues the killed run's MLflow run (its id is in the
    state folder): one run, FINISHED, instead of a RUNNING one forever and a second one."""
    import mlflow  # here, not at the top: the training functions run without MLflow (benchmarks, tests)

    started = time.perf_counter()
    name = args.out_name or f"stage{args.stage}"
    ckpt = checkpoint_dir(cfg, args.data)
    params = {k: str(v)[:250] for k, v in flatten(config_to_dict(cfg)).items()}
    # Locked before the store is touched: a refused second training leaves no trace there. A --data folder that does
    # not exist gets no lock (it would create the folder): the run fails on it below, having written nothing.
    lock = exclusive(ckpt, name) if cfg.checkpoints or Path(args.data).is_dir() else contextlib.nullcontext()
    with lock:
        setup_mlflow("dashclip-embeddings")
        previous = _interrupted_run(ckpt / f"{name}.state", params)
        opened = mlflow.start_run(run_id=previous) if previous else mlflow.start_run(run_name=f"{cfg.name}/{name}")
        with opened as active:
            if previous:
                print(f"stage {args.stage}: continuing MLflow run {previous} of the interrupted training", flush=True)
            return _train_in_run(args, cfg, ranks, name, params, active, started)


def _log_params_once(params: dict[str, str]) -> None:
    """log_params on a new run; on a continued one only the keys it lacks (MLflow refuses to change a value: a
    resumed run may change run control such as stop_at_step or checkpoint_every, the tag rerun/<key> says so)."""
    import mlflow

    run = mlflow.active_run()
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.params
    mlflow.log_params({k: v for k, v in params.items() if k not in logged})
    mlflow.set_tags({f"rerun/{k}": v for k, v in params.items() if k in logged and logged[k] != v})


def _train_in_run(args: argparse.Namespace, cfg: EmbeddingConfig, ranks: Ranks, name: str, params: dict[str, str],
                  active, started: float) -> int:
    """Train inside the active MLflow run; its id goes into the state folder for a rerun to continue."""
    import mlflow

    mlflow.set_tags({"stage": args.stage, "data": str(args.data), "checkpoint_name": name, "world_size": ranks.world})
    _log_params_once(params)
    train = train_stage1 if args.stage == 1 else train_stage2
    logged = frozenset(m.step for m in mlflow.MlflowClient().get_metric_history(active.info.run_id, "train/loss"))
    try:
        final = train(cfg, args.data, progress=not args.no_progress, log=_epoch_logger(mlflow.log_metrics, logged),
                      out_name=name, ranks=ranks, state_json={"mlflow_run_id": active.info.run_id})
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
    last = meta.get("evals", [{}])[-1] if meta.get("evals") else {}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k not in ("epoch", "step"))
    print(f"stage {args.stage}: {len(meta['history'])} steps in {seconds:.0f} s -> {final}"
          + (f" ({shown})" if shown else "") + f" [mlflow run {active.info.run_id}]")
    return 0

if __name__ == "__main__":
    exit_on(main, ConfigError, DataError, SchemaError, CheckpointError)  # bad input: one line, exit status 2
