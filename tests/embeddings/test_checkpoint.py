"""DashCLIP checkpoints (safetensors + JSON, atomic) and the resumable training state."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from embeddings.checkpoint import (load_checkpoint, load_train_state, read_checkpoint_meta, save_checkpoint,
                                   save_train_state, train_fingerprint)
from embeddings.config import EmbeddingConfig
from embeddings.model import build_model
from tests.embeddings.helpers import TINY, all_outputs, model_inputs


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    model = build_model(TINY).eval()
    with torch.no_grad():  # move away from the seeded initialisation, so a load that drops weights shows
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model.temp.fill_(0.05)
    ids, mask, px = model_inputs()
    path = save_checkpoint(model, TINY, tmp_path / "ckpt")
    assert sorted(f.name for f in path.iterdir()) == ["model.safetensors", "model_config.json"]
    assert sorted(f.name for f in tmp_path.iterdir()) == ["ckpt"]  # no temporary folder left behind
    meta = json.loads((path / "model_config.json").read_text())
    assert meta["model_config"]["text_layers"] == 2 and len(meta["fingerprint"]) == 16
    assert meta["blip_config"]["text_config"]["hidden_size"] == 32
    save_checkpoint(model, TINY, path)  # overwriting an existing checkpoint works too
    again, cfg = load_checkpoint(path, expected_cfg=TINY)
    again.eval()
    assert cfg == TINY
    assert again.temp.item() == pytest.approx(0.05)
    want, got = all_outputs(model, ids, mask, px), all_outputs(again, ids, mask, px)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)


def test_checkpoint_of_another_config_is_refused_by_name(tmp_path):
    two = dataclasses.replace(TINY, text_layers=2)
    save_checkpoint(build_model(two), two, tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"text_layers=2, the config asks for text_layers=3"):
        load_checkpoint(tmp_path / "ckpt", expected_cfg=dataclasses.replace(TINY, text_layers=3))
    with pytest.raises(ValueError, match="modalities"):
        load_checkpoint(tmp_path / "ckpt", expected_cfg=dataclasses.replace(TINY, modalities="text"))
    # a weights file that lost a tensor is named, not loaded half
    weights = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    del weights["query_proj.bias"]
    save_file(weights, str(tmp_path / "ckpt" / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks parameter 'query_proj.bias'"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="not a DashCLIP checkpoint"):
        load_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="text_layers"):  # and the config must describe the model it saves
        save_checkpoint(build_model(two), dataclasses.replace(two, text_layers=3), tmp_path / "bad")


def _params(model) -> list[torch.nn.Parameter]:
    return [model.temp, *model.product_proj.parameters()]


def test_train_state_round_trip_restores_weights_optimizer_rng_and_extra_tensors(tmp_path):
    model = build_model(TINY)
    opt = torch.optim.AdamW(_params(model), lr=1e-3)
    ids, mask, px = model_inputs()
    (model.encode_product(ids, mask, px).sum() + model.temp).backward()
    opt.step()
    torch.manual_seed(7)
    queue = torch.randn(4, 16)
    counters = {"step": 1, "history": [{"loss": 0.5}], "train_fingerprint": "f"}
    save_train_state(model, opt, tmp_path / "s.state", counters, extra={"queue": queue})
    after_save = torch.rand(3)  # the RNG stream a resumed run must continue from
    meta = read_checkpoint_meta(tmp_path / "s.state")
    assert meta["step"] == 1 and meta["history"] == [{"loss": 0.5}]

    fresh = build_model(TINY, seed=1)
    fresh_opt = torch.optim.AdamW(_params(fresh), lr=1e-3)
    torch.manual_seed(99)
    restored, extra = load_train_state(fresh, fresh_opt, tmp_path / "s.state", "f", stage=1)
    assert restored["step"] == 1 and torch.equal(extra["queue"], queue)
    assert torch.equal(torch.rand(3), after_save)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    for p, q in zip(_params(model), _params(fresh)):
        for slot in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(fresh_opt.state[q][slot], opt.state[p][slot], rtol=0, atol=0)
    assert load_train_state(fresh, fresh_opt, tmp_path / "absent.state", "f", stage=1) is None
    with pytest.raises(ValueError, match="holds a stage-2 run of another config"):
        load_train_state(fresh, fresh_opt, tmp_path / "s.state", "other", stage=2)


def test_train_fingerprint_ignores_run_control_only():
    cfg = EmbeddingConfig()
    same = train_fingerprint(cfg, 1, 100)
    assert train_fingerprint(dataclasses.replace(cfg, stop_at_step=3, threads=2, eval_every=0), 1, 100) == same
    assert train_fingerprint(dataclasses.replace(cfg, max_steps=3), 1, 100) != same  # max_steps sizes the schedule
    assert train_fingerprint(dataclasses.replace(cfg, seed=1), 1, 100) != same
    assert train_fingerprint(cfg, 2, 100) != same and train_fingerprint(cfg, 1, 101) != same
    lr = dataclasses.replace(cfg, stage1=dataclasses.replace(cfg.stage1, lr=0.1))
    assert train_fingerprint(lr, 1, 100) != same
