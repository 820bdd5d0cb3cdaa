"""Bad input at the embeddings entry points: one line `error: ...` on stderr naming the problem, exit status 2, no
traceback (core.config.exit_on); a truncated table is named by its file; a pickle where safetensors belong is
refused unread. Three subprocess runs (one per entry point, ~5 s each: every one imports torch); the other cases
call main() or the reader and check the error class and message."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from core.config import ConfigError, load_config
from embeddings import precompute
from embeddings.checkpoint import CheckpointError, load_checkpoint, load_train_state, save_checkpoint
from embeddings.config import EmbeddingConfig
from embeddings.data import DataError, load_queries
from embeddings.evaluate import load_eval_data
from embeddings.model import build_model
from embeddings.train import train_stage1, train_stage2
from feature_store.schema import write_table
from tests.conftest import ROOT
from tests.embeddings.helpers import CONFIG, TINY


def _entry_point(module: str, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *map(str, argv)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def _tiny_checkpoint(folder, *overrides: str):
    """A checkpoint of the tiny config's model (untrained), with the overrides."""
    cfg = load_config(EmbeddingConfig, CONFIG, list(overrides)).model
    return save_checkpoint(build_model(cfg), cfg, folder)


def _truncate(file) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


class _Payload:
    """Unpickling this creates a folder: proof that a file was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


# ------------------------------------------------------------------------------------------------------------
# the three entry points as a user runs them


def test_train_names_a_bad_config_in_one_line(tmp_path):
    done = _entry_point("embeddings.train", "--stage", "2", "--config", CONFIG, "--data", tmp_path,
                        "model.query_tower=shared")  # the image catalog's multimodal products: no shared tower
    assert "query_tower=shared encodes queries with the product encoder" in _one_error_line(done)


def test_evaluate_names_a_checkpoint_of_another_modality_before_any_work(world, tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "text_ckpt", "model.modalities=text")
    done = _entry_point("embeddings.evaluate", "--config", CONFIG, "--data", world, "--encoder", f"stage2={ckpt}",
                        "--no-tsne")
    line = _one_error_line(done)
    assert f"checkpoint {ckpt} was saved with modalities='text', the config asks for modalities='image_text'" in line
    assert not (world / "embeddings" / "eval").exists()  # refused before anything was written


def test_precompute_names_a_truncated_table_by_its_file(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    queries = tmp_path / "queries.parquet"
    write_table("queries", pd.DataFrame({"query_id": [1, 2], "query_text": ["gala apples", "lager"]}), tmp_path)
    (tmp_path / "part-00000.parquet").rename(queries)
    _truncate(queries)
    done = _entry_point("embeddings.precompute", "--checkpoint", ckpt, "--queries", queries, "--out",
                        tmp_path / "out", "--no-progress")
    line = _one_error_line(done)
    assert f"{queries} is not a readable parquet file" in line and "table 'queries'" in line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------------
# the same errors in process


def test_a_pickle_where_safetensors_belong_is_refused_and_never_unpickled(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    marker = tmp_path / "unpickled"
    for pickled in (pickle.dumps(_Payload(marker), protocol=2), None):
        if pickled is None:  # torch.save's zip of pickles
            torch.save({"weights": _Payload(marker)}, ckpt / "model.safetensors")
        else:
            (ckpt / "model.safetensors").write_bytes(pickled)
        with pytest.raises(CheckpointError, match=r"model\.safetensors is a (pickle|torch\.save).*refused unread"):
            precompute.main(["--checkpoint", str(ckpt), "--queries", str(tmp_path / "q"), "--out",
                             str(tmp_path / "out"), "--no-progress"])
        with pytest.raises(CheckpointError, match="refused unread"):  # a training state too
            model = build_model(TINY)
            state = tmp_path / "stage2.state"
            save_checkpoint(model, TINY, state, extra_tensors={"rng::torch": torch.get_rng_state()},
                            extra_json={"train_fingerprint": "f"})
            (state / "train_state.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes())
            load_train_state(model, torch.optim.AdamW(model.parameters()), state, "f", stage=2)
    assert not marker.exists()
    _tiny_checkpoint(ckpt)
    _truncate(ckpt / "model.safetensors")  # its header intact, its tensors cut short
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_checkpoint(ckpt)
    (ckpt / "model_config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model_config\.json: not valid JSON"):
        load_checkpoint(ckpt)


def test_stage2_without_its_stage1_checkpoint_is_named_before_reading_data(tmp_path):
    cfg = load_config(EmbeddingConfig, CONFIG)
    with pytest.raises(CheckpointError, match="stage 2 starts from a stage-1 checkpoint: .*stage1 not found"):
        train_stage2(cfg, tmp_path / "no_data_either", progress=False)
    _tiny_checkpoint(tmp_path / "no_data_either" / "embeddings" / "checkpoints" / "stage1", "model.text_layers=2")
    with pytest.raises(CheckpointError, match="saved with text_layers=2, the config asks for text_layers=1"):
        train_stage2(cfg, tmp_path / "no_data_either", progress=False)
    with pytest.raises(ConfigError, match="stage 1 aligns images and titles"):
        train_stage1(load_config(EmbeddingConfig, CONFIG, ["model.modalities=text"]), tmp_path, progress=False)


def test_a_truncated_part_of_a_table_folder_is_named(tiny_world, tmp_path):
    world = tmp_path / "tiny"
    shutil.copytree(tiny_world / "raw", world / "raw")
    folder = tmp_path / "queries"
    for part, ids in enumerate(([1, 2], [3])):
        write_table("queries", pd.DataFrame({"query_id": ids, "query_text": ["a", "b", "c"][: len(ids)]}), folder,
                    part=part)
    _truncate(folder / "part-00001.parquet")
    with pytest.raises(DataError, match=r"table 'queries': .*part-00001\.parquet is not a readable parquet file"):
        load_queries(None, folder)
    with pytest.raises(DataError, match="table 'queries': no parquet file or folder at"):
        load_queries(None, tmp_path / "absent")
    _truncate(world / "raw" / "products" / "part-00000.parquet")
    with pytest.raises(DataError, match=r"table 'products': .*products/part-00000\.parquet is not a readable"):
        load_eval_data(load_config(EmbeddingConfig, CONFIG), world)  # what embeddings.evaluate reads first


def test_an_invalid_checkpoint_config_is_a_checkpoint_error(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "ckpt")
    meta = json.loads((ckpt / "model_config.json").read_text())
    meta["model_config"]["temp_init"] = 0.0
    (ckpt / "model_config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="its model config is invalid: temp_init=0.0 must be positive"):
        load_checkpoint(ckpt)
