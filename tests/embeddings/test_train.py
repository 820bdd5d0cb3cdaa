"""DashCLIP training: the learning-rate schedule, a killed run (stop_at_step) that resumes to the weights of an
uninterrupted one, in both stages, and a run that max_steps ends, which finishes like any other."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from safetensors.torch import load_file

from embeddings.train import StopTraining, lr_at
from tests.embeddings.helpers import mlflow_runs, run_train


def test_lr_warms_up_linearly_then_decays_to_a_tenth():
    assert [lr_at(s, 100, 1.0, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 100, 1.0, 4) == pytest.approx(1.0)
    assert lr_at(52, 100, 1.0, 4) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, 100, 2.0, 4) == pytest.approx(0.2) and lr_at(500, 100, 2.0, 4) == pytest.approx(0.2)
    decay = [lr_at(s, 100, 1.0, 4) for s in range(4, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


@pytest.mark.parametrize("options", [(), ("stage1.momentum=0.9", "stage1.queue_size=48", "stage1.alpha=0.4")],
                         ids=["blip-itc", "momentum-queue-soft-targets"])
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(world, tmp_path, options):
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_train(world, 1, f"checkpoints={full}", *options)
    with pytest.raises(StopTraining, match="stopped at step 4"):
        run_train(world, 1, f"checkpoints={killed}", "stop_at_step=4", *options)
    state = json.loads((killed / "stage1.state" / "model_config.json").read_text())
    assert state["step"] == 4 and not (killed / "stage1").exists()
    assert mlflow_runs()["tiny/stage1"].info.status in ("KILLED", "FINISHED")
    run_train(world, 1, f"checkpoints={killed}", *options)
    a = load_file(str(full / "stage1" / "model.safetensors"))
    b = load_file(str(killed / "stage1" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-6, err_msg=k)
    # a state folder of another config is refused rather than silently mixed
    with pytest.raises(StopTraining):
        run_train(world, 1, f"checkpoints={killed}", "stop_at_step=2", "stage1.lr=0.01", *options)
    with pytest.raises(ValueError, match="another config"):
        run_train(world, 1, f"checkpoints={killed}", "stage1.lr=0.02", *options)


def test_stage2_resumes_too(world, tmp_path):
    run_train(world, 1, f"checkpoints={tmp_path}")
    run_train(world, 2, f"checkpoints={tmp_path}", out_name="full")
    with pytest.raises(StopTraining, match="stopped at step 3"):
        run_train(world, 2, f"checkpoints={tmp_path}", "stop_at_step=3", out_name="killed")
    run_train(world, 2, f"checkpoints={tmp_path}", out_name="killed")
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model.safetensors"))
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-6, err_msg=k)


def test_a_state_caught_between_its_two_renames_is_found_under_its_fixed_old_name(tmp_path):
    """A new state replaces the previous one in two renames (the previous aside, the new in place); killed between
    them, the previous waits under .<name>.state.old, where a rerun looks (a pid in the name would lose it)."""
    from embeddings.checkpoint import find_train_state, remove_train_state

    state = tmp_path / "stage1.state"
    assert find_train_state(state) is None
    (tmp_path / ".stage1.state.old").mkdir()
    (tmp_path / ".stage1.state.old" / "model_config.json").write_text("{}")
    assert find_train_state(state) == tmp_path / ".stage1.state.old"
    state.mkdir()
    (state / "model_config.json").write_text("{}")
    assert find_train_state(state) == state  # the complete new one first
    remove_train_state(state)
    assert list(tmp_path.iterdir()) == []
