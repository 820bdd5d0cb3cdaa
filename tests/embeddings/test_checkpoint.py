"""DashCLIP checkpoints (safetensors + JSON, atomic) and the resumable training state."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from embeddings.checkpoint import (CheckpointError, fingerprint, load_checkpoint, load_train_state,
                                   read_checkpoint_meta, save_checkpoint, save_train_state, train_fingerprint)
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
    with pytest.raises(CheckpointError, match="not a DashCLIP checkpoint"):
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


SHARED = dataclasses.replace(TINY, modalities="text", query_tower="shared")
QUERY_TOWER = ("query_encoder.", "query_proj.")


def test_a_shared_query_tower_is_saved_once_and_reloads_to_the_same_embeddings(tmp_path):
    shared, separate = build_model(SHARED).eval(), build_model(dataclasses.replace(SHARED, query_tower="separate"))
    with torch.no_grad():  # away from the seeded initialisation, so a load that drops weights shows
        for p in shared.parameters():
            p.add_(0.01 * torch.randn_like(p))
    a = save_checkpoint(shared, SHARED, tmp_path / "shared") / "model.safetensors"
    b = save_checkpoint(separate, separate.cfg, tmp_path / "separate") / "model.safetensors"
    saved_a, saved_b = load_file(str(a)), load_file(str(b))
    query_side = {k for k in saved_b if k.startswith(QUERY_TOWER)}
    assert query_side and not any(k.startswith(QUERY_TOWER) for k in saved_a)
    assert set(saved_a) == set(saved_b) - query_side  # everything else is there, once
    values_a, values_b = (sum(v.numel() for v in saved.values()) for saved in (saved_a, saved_b))
    query_values = sum(saved_b[k].numel() for k in query_side)
    assert values_a == values_b - query_values
    # the query encoder is a second text encoder (less cross-attention): about half of this text model
    assert 0.4 < query_values / values_b < 0.5
    assert 0.5 < a.stat().st_size / b.stat().st_size < 0.6
    again, cfg = load_checkpoint(a.parent, expected_cfg=SHARED)
    assert cfg == SHARED and again.query_encoder is None and again.query_proj is None
    ids, mask, _ = model_inputs()
    with torch.no_grad():
        for encode in ("encode_query", "encode_product"):
            want, got = getattr(shared, encode)(ids, mask), getattr(again.eval(), encode)(ids, mask)
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=encode)


def test_a_shared_tower_checkpoint_of_an_older_version_with_its_stale_query_encoder_still_loads(tmp_path):
    """Before query_tower=shared stopped building the query encoder, its checkpoints held one (never read)."""
    shared = build_model(SHARED).eval()
    path = save_checkpoint(shared, SHARED, tmp_path / "old")
    old_layout = build_model(dataclasses.replace(SHARED, query_tower="separate"))  # the tensors the old model had
    stale = {k: v for k, v in old_layout.state_dict().items() if k.startswith(QUERY_TOWER)}
    save_file({**load_file(str(path / "model.safetensors")), **stale}, str(path / "model.safetensors"))
    meta = json.loads((path / "model_config.json").read_text())
    meta["fingerprint"] = fingerprint(old_layout)
    (path / "model_config.json").write_text(json.dumps(meta))
    model, _ = load_checkpoint(path, expected_cfg=SHARED)
    assert model.query_encoder is None and not any(k.startswith(QUERY_TOWER) for k in model.state_dict())
    ids, mask, _ = model_inputs()
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode_query(ids, mask), shared.encode_query(ids, mask), rtol=0,
                                   atol=0)
    meta["fingerprint"] = fingerprint(shared)  # a JSON that was not saved with these weights is still refused
    (path / "model_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="fingerprint does not match model.safetensors"):
        load_checkpoint(path)
