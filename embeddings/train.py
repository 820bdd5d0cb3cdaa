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
import hashlib
import itertools
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from embeddings import data as D
from embeddings.loss import SoftTargets, clamp_temperature, itc_loss, itm_loss, pqc_loss, sample_hard_negatives
from embeddings.model import (DashClip, ModelConfig, build_model, load_checkpoint, load_tokenizer, read_checkpoint_meta,
                              save_checkpoint, tokenize)
from core.config import ConfigError, add_config_args, config_from_args, config_to_dict


@dataclass(frozen=True)
class Stage1Config:
    epochs: int = 4
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 20
    itm: bool = True  # image-text matching with hard negatives, on top of ITC
    # Share of ITM negatives drawn uniformly from the batch instead of by ITC similarity (0 = BLIP: all hard).
    # Trained from scratch, the ITM head never leaves the constant P(match) = 1/3 on hard negatives alone (demo,
    # 4 epochs: held-out AUC vs random negatives 0.63); half random ones give it easy mismatches to learn from
    # (AUC 0.72, aisle accuracy unchanged). ITM stays weak either way (P(match) near 1/3 for all pairs).
    itm_random_negatives: float = 0.5
    momentum: float = 0.0  # BLIP: 0.995. > 0 keeps EMA copies of the unimodal encoders (needed by queue / alpha)
    queue_size: int = 0  # BLIP: 57600. Momentum features of past batches as extra ITC candidates
    alpha: float = 0.0  # BLIP: 0.4. Weight of the momentum encoders' soft ITC targets
    # Also contrast the projected multimodal representation product_proj(C_i) with the product's own title and
    # image features (InfoNCE, both directions): C_i becomes an embedding in the ITC space, and stage 2 starts from
    # it instead of from a projection that never saw C_i. Off = plain BLIP (ITC + ITM).
    product_itc: bool = True


@dataclass(frozen=True)
class Stage2Config:
    epochs: int = 4
    batch_size: int = 128
    lr: float = 5e-4
    warmup_steps: int = 20
    init_from: Literal["stage1", "offshelf"] = "stage1"  # "offshelf": stage 2 alone, for the ablation
    negatives: int = 3  # explicit negative queries per product
    positive_labels: tuple[int, ...] = (2,)
    negative_labels: tuple[int, ...] = (0, 1)
    negative_weights: tuple[float, ...] = (0.75, 0.25)  # sampling ratio between the negative label types
    in_batch_negatives: bool = True
    train_product_encoder: bool = False  # False: product side frozen, product_proj trained (fast)


@dataclass(frozen=True)
class EmbeddingConfig:
    name: str = "demo"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    weight_decay: float = 0.02
    freeze_word_embeddings: bool = True  # the 30k-row vocabulary tables dominate the optimizer step otherwise
    heldout_query_share: float = 0.2  # of the relevance queries, never trained on (stage 2)
    heldout_product_share: float = 0.1  # of the products created in the training window, never trained on
    skip_corrupt_images: bool = False  # drop (and report) products whose picture cannot be decoded
    eval_every: int = 1  # epochs between validation passes (0: none)
    checkpoint_every: int = 50  # steps between resumable checkpoints
    max_steps: int = 0  # stop after this many steps (0: no limit); the state folder stays for a resume
    checkpoints: str = ""  # default: <data>/embeddings/checkpoints
    threads: int = 1  # torch intra-op threads; 1 is fastest on small shared CPUs (0: torch's default)

    def validate(self) -> None:
        if not 0 <= self.heldout_query_share < 1 or not 0 <= self.heldout_product_share < 1:
            raise ConfigError("EmbeddingConfig: 'heldout_query_share' and 'heldout_product_share' must be in [0, 1)")
        if len(self.stage2.negative_labels) != len(self.stage2.negative_weights):
            raise ConfigError("EmbeddingConfig: 'stage2.negative_weights' needs one weight per negative label")
        if set(self.stage2.positive_labels) & set(self.stage2.negative_labels):
            raise ConfigError("EmbeddingConfig: a label cannot be both positive and negative in stage2")
        if min(self.stage2.negative_weights, default=1) < 0:
            raise ConfigError("EmbeddingConfig: 'stage2.negative_weights' must be non-negative")
        s1 = self.stage1
        if not 0 <= s1.momentum < 1:
            raise ConfigError("EmbeddingConfig: 'stage1.momentum' must be in [0, 1)")
        if (s1.queue_size or s1.alpha) and not s1.momentum:
            raise ConfigError("EmbeddingConfig: 'stage1.queue_size' and 'stage1.alpha' need 'stage1.momentum' > 0 "
                              "(BLIP fills the queue and the soft targets from the momentum encoders)")
        if not 0 <= s1.alpha <= 1:
            raise ConfigError("EmbeddingConfig: 'stage1.alpha' must be in [0, 1]")
        if not 0 <= s1.itm_random_negatives <= 1:
            raise ConfigError("EmbeddingConfig: 'stage1.itm_random_negatives' must be in [0, 1]")
        for key in ("stage1.epochs", "stage1.batch_size", "stage2.epochs", "stage2.batch_size"):
            stage, name = key.split(".")
            if getattr(getattr(self, stage), name) < 1:
                raise ConfigError(f"EmbeddingConfig: '{key}' must be at least 1")
        if self.checkpoint_every < 1:
            raise ConfigError("EmbeddingConfig: 'checkpoint_every' must be at least 1")


class StopTraining(RuntimeError):
    """max_steps reached before the end: the state folder holds everything needed to resume."""


def set_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def checkpoint_dir(cfg: EmbeddingConfig, data_dir: Path) -> Path:
    return Path(cfg.checkpoints) if cfg.checkpoints else Path(data_dir) / "embeddings" / "checkpoints"


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# ----------------------------------------------------------------------------------------------------------------
# resumable state: weights, optimizer moments, extra tensors and the RNG in safetensors; counters in JSON


def _optimizer_tensors(model: DashClip, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    names = {p: n for n, p in model.named_parameters()}
    out = {}
    for p, state in opt.state.items():
        for key, value in state.items():
            out[f"opt::{names[p]}::{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


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
        meta_file = self.state_dir / "model_config.json"
        if not meta_file.is_file():
            return False
        meta = json.loads(meta_file.read_text())
        if meta.get("train_fingerprint") != self.fingerprint:
            raise ValueError(f"{self.state_dir} holds a stage-{self.stage} run of another config or data "
                             f"(fingerprint {meta.get('train_fingerprint')} != {self.fingerprint}); delete it to "
                             f"start over")
        self.model.load_state_dict(load_file(str(self.state_dir / "model.safetensors")), strict=True)
        tensors = load_file(str(self.state_dir / "train_state.safetensors"))
        params = dict(self.model.named_parameters())
        extra = {}
        for key, value in tensors.items():
            kind, _, rest = key.partition("::")
            if kind == "opt":
                name, slot = rest.rsplit("::", 1)
                self.opt.state[params[name]][slot] = value
            elif kind == "rng":
                torch.set_rng_state(value)
            else:
                extra[rest] = value
        if self.restore_extra:
            self.restore_extra(extra)
        self.step, self.history, self.evals = meta["step"], meta["history"], meta.get("evals", [])
        return True

    def save_state(self) -> None:
        tensors = {**_optimizer_tensors(self.model, self.opt), "rng::torch": torch.get_rng_state()}
        if self.extra_state:
            tensors.update({f"extra::{k}": v for k, v in self.extra_state().items()})
        save_checkpoint(self.model, self.model.cfg, self.state_dir, extra_tensors=tensors,
                        extra_json={"step": self.step, "history": self.history, "evals": self.evals,
                                    "train_fingerprint": self.fingerprint})

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


def _fingerprint(cfg: EmbeddingConfig, stage: int, n_examples: int) -> str:
    """What a resumed run must share with the interrupted one: the config (less run control) and the data size."""
    run_control = ("max_steps", "checkpoints", "checkpoint_every", "threads", "eval_every")
    relevant = {k: v for k, v in config_to_dict(cfg).items() if k not in run_control}
    spec = json.dumps({"cfg": relevant, "stage": stage, "n": n_examples}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


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


@torch.no_grad()
def product_hidden_all(model: DashClip, catalog: D.Catalog, ids: torch.Tensor, mask: torch.Tensor,
                       batch_size: int = 256, progress: bool = False, rows: np.ndarray | None = None) -> torch.Tensor:
    """[N, H] product representations before product_proj (multimodal C_i unless product_input says otherwise)
    for the catalog rows `rows` (default: all)."""
    was_training = model.training
    model.eval()
    rows = np.arange(len(catalog)) if rows is None else np.asarray(rows)
    out = []
    for s in tqdm(range(0, len(rows), batch_size), desc="products", unit="batch", disable=not progress):
        r = torch.from_numpy(rows[s : s + batch_size])
        width = int(mask[r].sum(1).max())
        px = None if catalog.pixels is None else catalog.pixels[r]
        out.append(model.product_hidden(ids[r, :width], mask[r, :width], px))
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.text_encoder.config.hidden_size)


def _validation_rows(holdout: D.Holdout, seed: int, n_train: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """Catalog rows for a quick aisle probe: a seeded sample of training products and every held-out one."""
    train = np.flatnonzero(holdout.train_products)
    train = np.sort(np.random.default_rng([seed, 99]).choice(train, size=min(n_train, len(train)), replace=False))
    return train, np.flatnonzero(~holdout.train_products)


def validate_products(model: DashClip, catalog: D.Catalog, ids, mask, holdout: D.Holdout, seed: int) -> dict:
    """Aisle accuracy of a linear probe on the product representation of held-out products."""
    from embeddings.evaluate import linear_probe

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
    catalog = D.load_catalog(data_dir, cfg.model.image_size, skip_corrupt_images=cfg.skip_corrupt_images)
    relevance = D.load_relevance(data_dir, catalog, D.load_queries(data_dir))
    holdout = D.make_holdout(catalog, relevance, data_dir, cfg.heldout_query_share, cfg.heldout_product_share, cfg.seed)
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
              out_name, _fingerprint(cfg, 1, len(train_idx)),
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


def stage2_inputs(cfg: EmbeddingConfig, data_dir: Path):
    """Catalog (with pictures unless the model reads titles only), queries, relevance and the hold-out split."""
    with_images = cfg.model.modalities != "text" and cfg.model.product_input != "title"
    catalog = D.load_catalog(data_dir, cfg.model.image_size, with_images=with_images,
                             skip_corrupt_images=cfg.skip_corrupt_images)
    queries = D.load_queries(data_dir)
    relevance = D.load_relevance(data_dir, catalog, queries)
    holdout = D.make_holdout(catalog, relevance, data_dir, cfg.heldout_query_share, cfg.heldout_product_share, cfg.seed)
    return catalog, queries, relevance, holdout


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
        prepare_stage2(model, keep_product_proj=read_checkpoint_meta(stage1).get("product_proj_trained", False))
        return model
    prepare_stage2(model, keep_product_proj=False)
    return model


def prepare_stage2(model: DashClip, keep_product_proj: bool) -> None:
    """Restart the query side from the product title encoder (DashClip.start_stage2). product_proj restarts from
    the matching unimodal projection too, unless stage 1 already trained it on C_i (product_itc) and the product
    embedding is the multimodal one."""
    trained = copy.deepcopy(model.product_proj.state_dict())
    model.start_stage2()
    if keep_product_proj and model.product_input == "multimodal":
        model.product_proj.load_state_dict(trained)


def validate_queries(model: DashClip, product_emb: Callable[[np.ndarray], torch.Tensor], q_ids, q_mask, q_row: dict,
                     pairs) -> dict:
    """PQC ranking quality on the held-out queries' labelled pairs: AUC of cos for label 2 vs label 0."""
    from core.metrics import auc

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
    return {"val/cos_auc_2v0": auc((pairs.label == 2).to_numpy().astype(np.int8), cos)}


def train_stage2(cfg: EmbeddingConfig, data_dir: Path, progress: bool = True, log=None, out_name: str = "stage2") -> Path:
    """Stage 2 on the training queries' relevance pairs; returns the final checkpoint folder."""
    s2 = cfg.stage2
    catalog, queries, relevance, holdout = stage2_inputs(cfg, data_dir)
    train_pids = catalog.product_ids[holdout.train_products]
    held = relevance.query_id.isin(holdout.heldout_queries)
    rel = relevance[~held & relevance.product_id.isin(train_pids)]
    sampler = D.PairSampler(rel, s2.positive_labels, s2.negative_labels, s2.negative_weights, s2.negatives, cfg.seed)
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
              out_name, _fingerprint(cfg, 2, len(sampler)))
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


def _epoch_logger():
    import mlflow

    def log(run: Run, epoch: int, steps: int) -> None:
        recent = run.history[-steps:]
        keys = [k for k in recent[0] if k != "step"]
        metrics = {f"train/{k}": float(np.mean([h[k] for h in recent])) for k in keys}
        metrics.update({k: v for k, v in run.evals[-1].items() if k != "epoch"} if run.evals else {})
        mlflow.log_metrics(metrics, step=epoch)

    return log


def plot_history(history: list[dict], evals: list[dict], path: Path) -> None:
    """Training curves (per step, smoothed) and validation metrics (per epoch) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in history[0] if k not in ("step", "temp", "loss")]
    val_keys = sorted({k for e in evals for k in e if k != "epoch"})
    fig, axes = plt.subplots(1, 2 if val_keys else 1, figsize=(11 if val_keys else 6, 3.6), squeeze=False)
    steps = np.array([h["step"] for h in history])
    window = max(1, len(history) // 50)
    for k in keys:
        values = np.convolve([h[k] for h in history], np.ones(window) / window, mode="valid")
        axes[0][0].plot(steps[window - 1 :], values, label=k, lw=1)
    axes[0][0].set_xlabel("step")
    axes[0][0].legend(fontsize=8)
    axes[0][0].set_title("training losses")
    if val_keys:
        for k in val_keys:
            pts = [(e["epoch"], e[k]) for e in evals if k in e]
            axes[0][1].plot(*zip(*pts), marker="o", label=k)
        axes[0][1].set_xlabel("epoch")
        axes[0][1].legend(fontsize=8)
        axes[0][1].set_title("validation (held-out products / queries)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    import mlflow

    from core.tracking import flatten, setup_mlflow

    setup_mlflow("dashclip-embeddings")
    started = time.perf_counter()
    name = args.out_name or f"stage{args.stage}"
    with mlflow.start_run(run_name=f"{cfg.name}/{name}") as active:
        mlflow.set_tags({"stage": args.stage, "data": str(args.data), "checkpoint_name": name})
        mlflow.log_params({k: str(v)[:250] for k, v in flatten(config_to_dict(cfg)).items()})
        train = train_stage1 if args.stage == 1 else train_stage2
        try:
            final = train(cfg, args.data, progress=not args.no_progress, log=_epoch_logger(), out_name=name)
        except StopTraining:
            mlflow.end_run(status="KILLED")
            raise
        meta = json.loads((final / "model_config.json").read_text())
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
