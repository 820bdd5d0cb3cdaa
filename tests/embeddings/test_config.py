"""DashCLIP's config tree: the tiny YAML loads, every inconsistent setting is refused by its dotted key, and the
threads setting reaches torch."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from core.config import ConfigError, load_config
from embeddings.config import EmbeddingConfig, ModelConfig, set_threads
from tests.embeddings.helpers import CONFIG


def test_the_tiny_config_overrides_the_defaults():
    cfg = load_config(EmbeddingConfig, CONFIG)
    assert cfg.name == "tiny" and cfg.model.init == "scratch" and cfg.model.embed_dim == 16
    assert cfg.stage1.batch_size == cfg.stage2.batch_size == 32 and cfg.stage1.epochs == 1
    assert cfg.model.max_title_len == ModelConfig().max_title_len  # not in the file: the default
    assert not cfg.model.from_blip_dir and dataclasses.replace(cfg.model, init="/some/blip").from_blip_dir


@pytest.mark.parametrize("overrides, message", [
    (["heldout_query_share=1.0"], "'heldout_query_share' and 'heldout_product_share' must be in"),
    (["heldout_product_share=-0.1"], "'heldout_query_share' and 'heldout_product_share' must be in"),
    (["stage2.negative_weights=[1.0]"], "one weight per negative label"),
    (["stage2.negative_labels=[2, 0]"], "both positive and negative"),
    (["stage2.negative_weights=[1.0, -0.5]"], "must be non-negative"),
    (["stage1.momentum=1.0"], "'stage1.momentum' must be in"),
    (["stage1.queue_size=16"], "need 'stage1.momentum' > 0"),
    (["stage1.momentum=0.9", "stage1.alpha=1.5"], "'stage1.alpha' must be in"),
    (["stage1.itm_random_negatives=2"], "'stage1.itm_random_negatives' must be in"),
    (["stage2.batch_size=0"], "'stage2.batch_size' must be at least 1"),
    (["stage1.epochs=0"], "'stage1.epochs' must be at least 1"),
    (["checkpoint_every=0"], "'checkpoint_every' must be at least 1"),
    (["stage2.negative_products=2"], "'stage2.negative_products' are negatives of the query -> product direction"),
    (["stage2.symmetric=true", "stage2.negative_products=-1"], "'stage2.negative_products' must be non-negative"),
    (["stage1.warmup_steps=-1"], "'stage1.warmup_steps' must be non-negative"),
    (["stage2.warmup_steps=-5"], "'stage2.warmup_steps' must be non-negative"),
    (["eval_every=-1"], "'eval_every' must be non-negative"),
    (["threads=-2"], "'threads' must be non-negative"),
])
def test_inconsistent_settings_are_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(EmbeddingConfig, CONFIG, overrides)
    load_config(EmbeddingConfig, CONFIG, ["stage1.momentum=0.9", "stage1.queue_size=16", "stage1.alpha=0.4"])


@pytest.mark.parametrize("sizes, message", [
    ({"image_size": 30}, "image_size=30 must be a multiple of patch_size=8"),
    ({"patch_size": 0}, "patch_size=0 must be at least 1"),  # was a ZeroDivisionError
    ({"init": "scratch", "text_heads": 0}, "text_heads=0 must be at least 1"),
    ({"embed_dim": -3}, "embed_dim=-3 must be at least 1"),
    ({"vision_hidden": 30}, "vision_hidden=30 must be a multiple of vision_heads=4"),
    ({"init": "scratch", "text_heads": 5}, "text_hidden=384 must be a multiple of text_heads=5"),
    ({"max_query_len": 1}, r"max_query_len=1 must be in \[2, 512\]"),
    ({"max_title_len": 513}, r"max_title_len=513 must be in \[2, 512\]"),
    ({"temp_init": 0.0}, "temp_init=0.0 must be positive"),
    ({"query_tower": "shared"}, "query_tower=shared encodes queries with the product encoder"),
])
def test_model_config_refuses_sizes_no_model_has(sizes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**sizes)


def test_set_threads_sets_torch_threads_and_zero_keeps_them():
    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        set_threads(0)
        assert torch.get_num_threads() == 1
        set_threads(2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
