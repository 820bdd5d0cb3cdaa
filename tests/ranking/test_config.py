"""ranking.config: the RankingConfig tree loads from YAML and overrides, and names every bad key or value."""

from __future__ import annotations

import re

import pytest

from core.config import ConfigError, load_config
from ranking.config import RankingConfig
from tests.conftest import ROOT


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'.*did you mean 'train.epochs'"):
        load_config(RankingConfig, None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match="unknown model"):
        load_config(RankingConfig, None, ["models=[dcn, dcnn]"])
    with pytest.raises(ConfigError, match="features.nan_policy"):
        load_config(RankingConfig, None, ["features.nan_policy=drop"])
    with pytest.raises(ConfigError, match="gain_slices: unknown slice.*product_nwe"):
        load_config(RankingConfig, None, ["gain_slices=[query_tail, product_nwe]"])
    assert load_config(RankingConfig, None, ["gain_slices=[position_3, product_cold]"]).gain_slices == (
        "position_3", "product_cold")


def test_gain_slices_and_product_history_edges():
    config = load_config(RankingConfig, None, ["gain_slices=[product_history, product_history_1_10]"])
    assert config.gain_slices == ("product_history", "product_history_1_10")
    for edges in ("[10, 10]", "[-1, 3]", "[]"):
        with pytest.raises(ConfigError, match="product_history_edges must be increasing"):
            load_config(RankingConfig, None, [f"slices.product_history_edges={edges}"])


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_the_shipped_configs_load(name):
    cfg = load_config(RankingConfig, ROOT / "experiments" / "configs" / "ranking" / f"{name}.yaml")
    assert cfg.name == name and cfg.export_model in cfg.models


def test_the_ablation_config_compares_the_two_tower_variants_with_dcn_and_exports_nothing():
    cfg = load_config(RankingConfig, ROOT / "experiments" / "configs" / "ranking" / "demo_ablations.yaml")
    assert cfg.baseline in cfg.models and not cfg.export_model
    assert {"dashclip_two_tower", "dashclip_two_tower_no_history", "dcn_dashclip_concat"} <= set(cfg.models)


def test_export_model_must_be_a_trained_neural_model():
    with pytest.raises(ConfigError, match="is a baseline"):
        load_config(RankingConfig, None, ["export_model=gbdt", "models=[gbdt]"])
    with pytest.raises(ConfigError, match="is not among models"):
        load_config(RankingConfig, None, ["models=[dcn]"])


@pytest.mark.parametrize("override, message", [
    ("name=../elsewhere", "RankingConfig: 'name' must be a plain folder name"),  # <checkpoint_dir>/<name>/ escaped
    ("name=/tmp/x", "RankingConfig: 'name' must be a plain folder name"),  # replaced the checkpoint root entirely
    ("max_rows=-1", "max_rows must be >= 0, got -1"),
    ("threads=-2", "threads must be >= 0, got -2"),
    ("train.early_stopping_patience=-1", "train.early_stopping_patience must be >= 0"),
    ("baselines.gbdt_leaves=1", "baselines.gbdt_leaves must be >= 2"),
    ("baselines.gbdt_rounds=0", "baselines.gbdt_rounds must be >= 1"),
    ("slices.min_count=-1", "slices.min_count must be >= 0"),
])
def test_names_that_leave_the_checkpoint_folder_and_negative_counts_are_refused(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(RankingConfig, None, [override])
