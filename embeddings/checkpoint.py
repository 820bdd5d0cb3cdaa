"""DashCLIP checkpoints and resumable training state, safetensors and JSON only (no pickle), written atomically.

A checkpoint folder holds model.safetensors and model_config.json (the ModelConfig, the resolved BlipConfig, a
fingerprint of the parameter shapes and whatever the caller adds, e.g. the training history). A training run's
state folder (<name>.state/) is a checkpoint plus train_state.safetensors: the optimizer moments
("opt::<parameter>::<slot>"), the torch RNG ("rng::torch") and a stage's own tensors ("extra::<name>"), with the
step, history and a fingerprint of the config in its JSON, so that a killed run resumes where it stopped. While a
new state replaces the previous one, the previous waits under the fixed name .<name>.state.old, where
find_train_state looks if a kill came between the two renames. exclusive(): one training per checkpoint at a time.

Reading one never unpickles anything: a weights file that is not safetensors (torch.save's zip or a bare pickle
where model.safetensors should be) is refused with CheckpointError before a byte of it is interpreted, as is a
folder, a config or a set of tensors that does not describe the model asked for.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BlipConfig, BlipForImageTextRetrieval

from core.config import config_to_dict
from core.files import current_or_previous, locked, previous_version, staged_folder
from embeddings.config import EmbeddingConfig, ModelConfig
from embeddings.model import DashClip
from embeddings.pretrained import architecture, blip_config, resolved_blip_config

RUN_CONTROL = ("stop_at_step", "checkpoints", "checkpoint_every", "threads", "eval_every")  # a resume may change these
# What checkpoints of a shared query tower (ModelConfig.query_tower="shared") written before the model stopped
# building a separate one still hold: a stale copy of the text encoder that nothing reads. Loading drops it.
STALE_QUERY_TOWER = ("query_encoder.", "query_proj.")
PICKLE_MAGIC = {b"PK\x03\x04": "a torch.save (zip of pickles) file", b"\x80": "a pickle file"}


class CheckpointError(ValueError):
    """A checkpoint or training-state folder that cannot be loaded as asked: not a checkpoint, not safetensors,
    another architecture, modalities or run, weights that do not match their config. Names the folder and what is
    wrong; the entry points print it as one line and exit 2."""


def _tensor_spec(state: dict[str, torch.Tensor]) -> str:
    spec = ";".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(state.items()))
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def fingerprint(model: nn.Module) -> str:
    """A hash of parameter names and shapes: two models with the same fingerprint can exchange weights."""
    return _tensor_spec(model.state_dict())


def _first_difference(found: dict, wanted: dict) -> str | None:
    for key, value in wanted.items():
        if found.get(key) != value:
            return f"{key}={found.get(key)!r}, the config asks for {key}={value!r}"
    return None


def save_checkpoint(model: DashClip, cfg: ModelConfig, path_dir: str | Path,
                    extra_tensors: dict[str, torch.Tensor] | None = None, extra_json: dict | None = None,
                    old: Path | None = None) -> Path:
    """Write model.safetensors and model_config.json (cfg, the resolved BlipConfig, fingerprint, extra_json) into
    path_dir, through core.files.staged_folder (complete or not at all; `old`: where the previous folder waits
    during the swap, see core.files.replace_folder). extra_tensors (e.g. optimizer state) go to
    train_state.safetensors."""
    if cfg.modalities != model.cfg.modalities:
        raise ValueError(f"cfg.modalities={cfg.modalities!r} but the model was built with {model.cfg.modalities!r}")
    if not cfg.from_blip_dir and (diff := _first_difference(architecture(model.blip_config),
                                                            architecture(blip_config(cfg)))):
        raise ValueError(f"cfg does not describe this model: the model has {diff}")
    path = Path(path_dir)
    with staged_folder(path, old) as tmp:
        # clone: safetensors refuses tensors that share storage (tied weights, views)
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        if extra_tensors:
            save_file({k: v.detach().clone().contiguous() for k, v in extra_tensors.items()},
                      str(tmp / "train_state.safetensors"))
        meta = {"model_config": asdict(cfg), "blip_config": model.blip_config.to_dict(),
                "enc_token_id": model.enc_token_id, "fingerprint": fingerprint(model), **(extra_json or {})}
        (tmp / "model_config.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return path


def read_checkpoint_meta(path_dir: str | Path) -> dict:
    """The parsed model_config.json of a checkpoint directory (CheckpointError if there is none or it is not a
    JSON object)."""
    meta_file = Path(path_dir) / "model_config.json"
    if not meta_file.is_file():
        raise CheckpointError(f"{path_dir} is not a DashCLIP checkpoint (no model_config.json)")
    try:
        meta = json.loads(meta_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta_file}: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_file}: expected a JSON object, got {type(meta).__name__}")
    return meta


def _check_safetensors_header(file: Path) -> None:
    """CheckpointError unless file starts as safetensors do: an 8-byte little-endian header length that fits in the
    file, then the JSON header's "{". Anything else is refused unread; a pickle (torch.save writes a zip of them)
    could run code when loaded, so its first bytes are only compared with the pickle signatures to say what it is."""
    if not file.is_file():
        raise CheckpointError(f"{file} not found: a DashCLIP checkpoint keeps its weights in {file.name}")
    with open(file, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and 0 < int.from_bytes(head[:8], "little") <= file.stat().st_size - 8 and head[8:] == b"{":
        return
    if kind := next((what for magic, what in PICKLE_MAGIC.items() if head.startswith(magic)), None):
        raise CheckpointError(f"{file} is {kind}, not safetensors: refused unread (unpickling can run code); "
                              f"convert the weights with safetensors.torch.save_file")
    raise CheckpointError(f"{file} is not a safetensors file (truncated or another format)")


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; anything else (a pickle above all, never unpickled) is a
    CheckpointError naming the file."""
    _check_safetensors_header(file)
    try:
        return load_file(str(file))
    except SafetensorError as err:
        raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from None


def _weights_for(model: DashClip, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """state, checked to hold exactly model's tensors with model's shapes (less a shared tower's stale query
    encoder, STALE_QUERY_TOWER); CheckpointError names the first parameter that differs."""
    if model.cfg.query_tower == "shared":
        state = {k: v for k, v in state.items() if not k.startswith(STALE_QUERY_TOWER)}
    own = model.state_dict()
    for name, tensor in own.items():
        if name not in state:
            raise CheckpointError(f"checkpoint {path} lacks parameter {name!r}")
        if state[name].shape != tensor.shape:
            raise CheckpointError(f"checkpoint {path}: parameter {name!r} has shape {tuple(state[name].shape)}, "
                                  f"the model expects {tuple(tensor.shape)}")
    if extra := sorted(set(state) - set(own)):
        raise CheckpointError(f"checkpoint {path} has parameter {extra[0]!r}, which the model lacks")
    return state


def check_checkpoint(path_dir: str | Path,
                     expected_cfg: ModelConfig | None = None) -> tuple[dict, ModelConfig, BlipConfig]:
    """What load_checkpoint refuses before it reads a weight, checked from the JSON and the weights file's first
    bytes (cheap: an entry point checks every checkpoint it was given before any other work) -> (the parsed
    model_config.json, the saved ModelConfig, the saved BlipConfig).

    With expected_cfg, a checkpoint of another architecture (sizes resolved as build_model would, or another
    modalities) raises CheckpointError naming the first differing key. product_input is not compared: stage 2
    rebuilds product_proj anyway."""
    path = Path(path_dir)
    meta = read_checkpoint_meta(path)
    if missing := [k for k in ("model_config", "blip_config", "enc_token_id") if k not in meta]:
        raise CheckpointError(f"checkpoint {path}: model_config.json lacks {missing[0]!r}")
    known = {f.name for f in fields(ModelConfig)}
    if unknown := sorted(set(meta["model_config"]) - known):
        raise CheckpointError(f"checkpoint {path}: unknown ModelConfig key {unknown[0]!r}")
    try:
        cfg = ModelConfig(**meta["model_config"])
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path}: its model config is invalid: {err}") from None
    saved_blip = BlipConfig.from_dict(meta["blip_config"])
    if expected_cfg is not None:
        found = {"modalities": cfg.modalities, **architecture(saved_blip)}
        wanted = {"modalities": expected_cfg.modalities, **architecture(resolved_blip_config(expected_cfg))}
        if diff := _first_difference(found, wanted):
            raise CheckpointError(f"checkpoint {path} was saved with {diff}")
    _check_safetensors_header(path / "model.safetensors")
    return meta, cfg, saved_blip


def load_checkpoint(path_dir: str | Path, expected_cfg: ModelConfig | None = None) -> tuple[DashClip, ModelConfig]:
    """Rebuild the model a checkpoint was saved from and load its weights -> (model, the saved ModelConfig).

    Refuses what check_checkpoint refuses (another architecture or modalities than expected_cfg: CheckpointError
    naming the first differing key); a weights file that does not match its config names the first differing
    parameter. A shared-tower checkpoint written when the model still built a (stale, unread) query encoder loads
    without it."""
    path = Path(path_dir)
    meta, cfg, saved_blip = check_checkpoint(path, expected_cfg)
    model = DashClip(cfg, BlipForImageTextRetrieval(saved_blip), meta["enc_token_id"])
    saved = read_safetensors(path / "model.safetensors")
    state = _weights_for(model, saved, path)
    if meta.get("fingerprint") != _tensor_spec(saved):  # the JSON and the weights were not saved together
        raise CheckpointError(f"checkpoint {path}: model_config.json's fingerprint does not match model.safetensors")
    model.load_state_dict(state, strict=True)
    return model, cfg


# ----------------------------------------------------------------------------------------------------------------
# resumable training state


def train_fingerprint(cfg: EmbeddingConfig, stage: int, n_examples: int) -> str:
    """What a resumed run must share with the interrupted one: the config (less run control) and the data size."""
    relevant = {k: v for k, v in config_to_dict(cfg).items() if k not in RUN_CONTROL}
    spec = json.dumps({"cfg": relevant, "stage": stage, "n": n_examples}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _optimizer_tensors(model: DashClip, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    names = {p: n for n, p in model.named_parameters()}
    out = {}
    for p, state in opt.state.items():
        for key, value in state.items():
            out[f"opt::{names[p]}::{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def find_train_state(path_dir: str | Path) -> Path | None:
    """The state folder, or its previous version if a kill came between the two renames of a save; None if none."""
    return current_or_previous(path_dir, lambda candidate: (candidate / "model_config.json").is_file())


def remove_train_state(path_dir: str | Path) -> None:
    path = Path(path_dir)
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(previous_version(path), ignore_errors=True)


def save_train_state(model: DashClip, opt: torch.optim.Optimizer, path_dir: str | Path, counters: dict,
                     extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Weights, optimizer moments, the torch RNG state and a stage's extra tensors; counters (JSON: step, history,
    train_fingerprint, ...) go to model_config.json."""
    tensors = {**_optimizer_tensors(model, opt), "rng::torch": torch.get_rng_state()}
    if extra is not None:
        tensors.update({f"extra::{k}": v for k, v in extra.items()})
    return save_checkpoint(model, model.cfg, path_dir, extra_tensors=tensors, extra_json=counters,
                           old=previous_version(path_dir))


def load_train_state(model: DashClip, opt: torch.optim.Optimizer, path_dir: str | Path, train_fingerprint: str,
                     stage: int) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """Restore what save_train_state wrote into model, opt and the torch RNG -> (the JSON counters, the extra
    tensors); None when path_dir holds no state (find_train_state). A state of another config or data
    (train_fingerprint differs) raises CheckpointError."""
    path = find_train_state(path_dir)
    if path is None:
        return None
    meta = read_checkpoint_meta(path)
    if meta.get("train_fingerprint") != train_fingerprint:
        raise CheckpointError(f"{path} holds a stage-{stage} run of another config or data "
                              f"(fingerprint {meta.get('train_fingerprint')} != {train_fingerprint}); delete it to "
                              f"start over")
    model.load_state_dict(_weights_for(model, read_safetensors(path / "model.safetensors"), path), strict=True)
    params = dict(model.named_parameters())
    extra = {}
    for key, value in read_safetensors(path / "train_state.safetensors").items():
        kind, _, rest = key.partition("::")
        if kind == "opt":
            name, slot = rest.rsplit("::", 1)
            opt.state[params[name]][slot] = value
        elif kind == "rng":
            torch.set_rng_state(value)
        else:
            extra[rest] = value
    return meta, extra


# ----------------------------------------------------------------------------------------------------------------
# one training per checkpoint


class CheckpointInUse(CheckpointError):
    """Another live process is training into the same checkpoint."""


def exclusive(checkpoints: str | Path, name: str):
    """Hold `<checkpoints>/.<name>.lock` for the block (core.files.locked). CheckpointInUse, naming the state
    folder and the holder's pid, when another process holds it: two trainings of one name would resume each
    other's state folder <name>.state and write over it and the final checkpoint."""
    folder = Path(checkpoints)
    return locked(folder / f".{name}.lock", busy=lambda pid: CheckpointInUse(
        f"checkpoint {folder / name} (state {folder / name}.state) is in use by another embeddings.train "
        f"(pid {pid}); wait for it to end, or give this run another --out-name or checkpoints folder"))
