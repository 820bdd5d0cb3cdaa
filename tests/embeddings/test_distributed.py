"""DashCLIP under torch.distributed (embeddings.distributed): 2 gloo ranks against one process on the same global
batches. One step of stage 1 and of stage 2 gives the same loss and gradients (1e-5 relative); a short stage-2 run,
killed and resumed on 2 ranks, gives the weights and held-out AUC of an uninterrupted one-process run; precompute
under torchrun writes the same table, byte for byte.

The 2-rank side is one torchrun launch of tests/embeddings/ddp_worker.py (2 processes, gloo on a free localhost
port) for the whole module; it writes what it computed to files that the tests compare with one process here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from embeddings.distributed import Ranks, shard
from embeddings.precompute import main as precompute_main
from embeddings.train import train_stage2
from tests.conftest import ROOT
from tests.embeddings.ddp_worker import PRECOMPUTE, one_steps, stage2_cfg
from tests.helpers.ports import free_ports

RTOL = 1e-5  # the brief's bar: float32 sums in another order differ by a few 1e-7 relative


def test_shard_splits_a_global_batch_like_array_split_with_stand_ins():
    assert shard(5, Ranks(0, 2)) == (slice(0, 3), (3, 2)) and shard(5, Ranks(1, 2)) == (slice(3, 5), (3, 2))
    assert shard(4, Ranks()).rows == slice(0, 4)  # one process: the whole batch
    # a batch smaller than the world: the empty rank encodes row 0 as a stand-in, which the gather drops
    assert shard(1, Ranks(1, 2)) == (slice(0, 1), (1, 0))


@pytest.fixture(scope="module")
def two_ranks(tiny_world, tmp_path_factory) -> Path:
    """The folder where `torchrun --nproc_per_node 2 -m tests.embeddings.ddp_worker` wrote its results."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_ports()[0]), "-m", "tests.embeddings.ddp_worker", str(out), str(tiny_world)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("embedded") == 1  # precompute: rank 0 alone reports (and writes)
    return out


def _assert_close(got: torch.Tensor, want: torch.Tensor, name: str, floor: float) -> None:
    """|got - want| <= RTOL * max(max|want|, floor) elementwise: relative to the tensor's scale, since gradients hold
    exact zeros; the floor (1e-6 of the step's largest gradient) covers gradients that are zero in exact arithmetic
    (the attention keys' biases: softmax ignores a shift), which hold rounding noise of 1e-12 only."""
    scale = max(float(want.abs().max()), floor)
    torch.testing.assert_close(got, want, rtol=0, atol=RTOL * scale, msg=name)


def test_two_ranks_give_one_process_loss_and_gradients_for_one_step_of_each_stage(two_ranks):
    torch.set_num_threads(1)
    want = one_steps(Ranks())
    got, other = torch.load(two_ranks / "steps.0.pt"), torch.load(two_ranks / "steps.1.pt")
    assert got.keys() == want.keys() and len([k for k in want if "/grad/" in k]) > 40
    largest = {step: max(float(v.abs().max()) for k, v in want.items() if k.startswith(f"{step}/grad/"))
               for step in ("s1", "s2.0", "s2.1")}
    for name in want:
        _assert_close(got[name], want[name], name, 1e-6 * largest[name.split("/")[0]])
        torch.testing.assert_close(other[name], got[name], rtol=0, atol=0, msg=name)  # DDP: every rank equal
    # the gradients reach the encoders through both ranks' rows (not only the replicated temperatures)
    assert float(want["s2.0/grad/query_encoder.encoder.layer.0.output.dense.weight"].abs().max()) > 0
    assert float(want["s1/grad/vision_model.embeddings.patch_embedding.weight"].abs().max()) > 0


def test_a_killed_and_resumed_two_rank_stage2_run_matches_one_process(two_ranks, tiny_world, tmp_path):
    """The global batches are the same rows, so the runs differ only by float sums in another order: weights agree
    to 1e-4 (absolute; measured 2e-6: Adam's normalised steps turn 1e-7 gradient differences into weight
    differences of up to the learning rate times their relative size) and the held-out AUC, a ranking of the
    cosines, to 1e-3 (one swapped pair of the ~10^4 compared moves it by 1e-4)."""
    torch.set_num_threads(1)
    one = train_stage2(stage2_cfg(tmp_path), tiny_world, progress=False)
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two_ranks / "ddp" / "stage2" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=0, atol=1e-4, err_msg=k)
    meta_a = json.loads((one / "model_config.json").read_text())
    meta_b = json.loads((two_ranks / "ddp" / "stage2" / "model_config.json").read_text())
    assert len(meta_b["history"]) == len(meta_a["history"]) > 3 and meta_b["best_step"] == meta_a["best_step"]
    auc_a, auc_b = (m["evals"][-1]["val/cos_auc_2v0"] for m in (meta_a, meta_b))
    assert abs(auc_a - auc_b) < 1e-3 and auc_a > 0.5
    np.testing.assert_allclose([h["loss"] for h in meta_b["history"]], [h["loss"] for h in meta_a["history"]],
                               rtol=RTOL)


def test_torchrun_precompute_writes_the_table_of_one_process(two_ranks, tiny_world, tmp_path):
    """2 ranks share the batches and rank 0 writes one version folder: byte for byte the one a single process
    writes (the same batches, so the same vectors)."""
    assert precompute_main(["--data", str(tiny_world), "--checkpoint", str(two_ranks / "ddp" / "stage2"),
                            "--out", str(tmp_path / "one"), *PRECOMPUTE]) == 0
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.parquet"))
    assert len(files) == 2
    for f in files:
        assert (two_ranks / "two" / f).read_bytes() == (tmp_path / "one" / f).read_bytes(), f
