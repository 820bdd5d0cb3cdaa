"""The 2-rank side of test_distributed.py, run by torchrun (2 gloo processes on localhost):

    torchrun --nproc_per_node 2 -m tests.embeddings.ddp_worker OUT DATA

Each rank writes OUT/steps.<rank>.pt (one step of each stage: loss, gradients, momentum queue); then the ranks
train a short stage 2 on the world at DATA into OUT/ddp/stage2, killed after step 3 (stop_at_step) and resumed, and
embed it with embeddings.precompute's own entry point into OUT/two. The test computes the same on one process and
compares."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.config import load_config  # noqa: E402
from embeddings import precompute  # noqa: E402
from embeddings.config import EmbeddingConfig, Stage1Config, Stage2Config  # noqa: E402
from embeddings.data import Stage2Batch  # noqa: E402
from embeddings.distributed import Ranks, data_parallel, init_from_env  # noqa: E402
from embeddings.model import build_model  # noqa: E402
from embeddings.preprocess import tokenize  # noqa: E402
from embeddings.pretrained import load_tokenizer  # noqa: E402
from embeddings.train import Momentum, StopTraining, stage1_step, stage2_loss, train_stage2  # noqa: E402
from tests.embeddings.helpers import CONFIG, TINY, model_inputs  # noqa: E402

QUERIES = ["apples", "cat litter", "lager", "gala apples", "sparkling water", "oat milk", "dog food"]
PRECOMPUTE = ["--version", "v", "--batch-size", "64", "--no-progress"]  # and --data, --checkpoint, --out


def _stage1_inputs(batch: int):
    titles = ["Sunny Farms Gala Apples 1kg", "Blue Bay Lager 6 Pack", "Whiskers cat litter", "Oat milk 1l",
              "Blue Bay Lager 6 Pack"]  # a duplicate title: same_item forbids it as a hard negative
    ids, mask = tokenize(load_tokenizer(TINY), titles[:batch], TINY.max_title_len)
    px = torch.randn(batch, 3, TINY.image_size, TINY.image_size, generator=torch.Generator().manual_seed(3))
    codes = np.unique(np.array(titles[:batch]), return_inverse=True)[1]
    return ids, mask, px, torch.from_numpy(codes[:, None] == codes[None, :])


def _stage2_setup(model, ranks: Ranks):
    """Stage 2's loss with the whole multimodal product encoder trained too, on fixed products and queries."""
    ids, mask, px = model_inputs()
    p_row = {10: 0, 11: 1, 12: 2}
    q_ids, q_mask = tokenize(load_tokenizer(TINY), QUERIES, TINY.max_query_len)
    q_row = {100 + i: i for i in range(len(QUERIES))}

    def product_emb(pids):
        rows = torch.tensor([p_row[int(p)] for p in pids])
        return model.encode_product(ids[rows], mask[rows], px[rows])

    s2 = Stage2Config(negatives=2, symmetric=True, negative_products=2)
    return lambda batch: stage2_loss(model, s2, batch, product_emb, q_ids, q_mask, q_row, ranks=ranks)


STAGE2_BATCHES = [  # 5 rows (3 + 2 on 2 ranks), a query positive twice, padding; then 1 row (a stand-in rank)
    Stage2Batch(np.array([10, 11, 12, 10, 11]), np.array([100, 101, 102, 103, 100]),
                np.array([[104, 105], [106, 0], [100, 103], [105, 0], [102, 104]]),
                np.array([[1, 1], [1, 0], [1, 1], [1, 0], [1, 1]], bool),
                np.array([[11, 12], [10, 0], [11, 0], [12, 11], [0, 0]]),
                np.array([[1, 1], [1, 0], [1, 0], [1, 1], [0, 0]], bool)),
    Stage2Batch(np.array([12]), np.array([106]), np.array([[100, 101]]), np.ones((1, 2), bool),
                np.array([[10, 11]]), np.ones((1, 2), bool)),
]
S1 = Stage1Config(momentum=0.9, queue_size=8, alpha=0.4, itm_random_negatives=0.5)


def one_steps(ranks: Ranks) -> dict[str, torch.Tensor]:
    """Loss, every gradient and the momentum queue of one stage-1 step, and loss and gradients of one stage-2 step
    per batch of STAGE2_BATCHES, computed by `ranks` (DDP for 2 ranks)."""
    out = {}
    model = build_model(TINY, seed=0).requires_grad_(True)
    mom = Momentum(model, S1, seed=0)
    step = data_parallel(model, lambda *a: stage1_step(model, S1, mom, *a, ranks=ranks), ranks)
    loss, terms, feats_m = step(*_stage1_inputs(5), torch.Generator().manual_seed(7))
    loss.backward()
    mom.enqueue(*feats_m)
    out.update({"s1/loss": loss.detach(), "s1/itm": torch.tensor(terms["itm"]), "s1/queue": mom.image_queue})
    out.update({f"s1/grad/{n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
    for k, batch in enumerate(STAGE2_BATCHES):
        model = build_model(TINY, seed=1).requires_grad_(True)
        step = data_parallel(model, _stage2_setup(model, ranks), ranks)
        loss, terms = step(batch)
        loss.backward()
        out[f"s2.{k}/loss"] = loss.detach()
        out.update({f"s2.{k}/grad/{n}": p.grad for n, p in model.named_parameters() if p.grad is not None})
    return out


def stage2_cfg(checkpoints: Path) -> EmbeddingConfig:
    """The short stage-2 run both sides train: from the untrained model (no stage 1 needed), every stage-2 piece on
    (symmetric, hard-negative products, keep_best), a global batch of 27 rows: 14 + 13 on 2 ranks."""
    cfg = load_config(EmbeddingConfig, CONFIG)
    return dataclasses.replace(cfg, checkpoints=str(checkpoints), stage2=dataclasses.replace(
        cfg.stage2, init_from="offshelf", symmetric=True, negative_products=2, keep_best=True, batch_size=27))


def main(out: Path, data: Path) -> None:
    torch.set_num_threads(1)
    ranks = init_from_env()
    torch.save(one_steps(ranks), out / f"steps.{ranks.rank}.pt")
    cfg = stage2_cfg(out / "ddp")
    try:
        train_stage2(dataclasses.replace(cfg, stop_at_step=3), data, progress=False, ranks=ranks)
        raise AssertionError("stop_at_step=3 did not stop the run")
    except StopTraining:
        pass  # a simulated kill after step 3: rank 0 saved the state folder, which every rank resumes from below
    train_stage2(cfg, data, progress=False, ranks=ranks)
    # the entry point, as a user runs it (it finds the process group up, and closes it)
    precompute.main(["--data", str(data), "--checkpoint", str(out / "ddp" / "stage2"), "--out", str(out / "two"),
                     *PRECOMPUTE])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
