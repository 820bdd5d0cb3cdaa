"""Export a trained pCTR model as a SavedModel with a `serving_default` signature over raw named features.

    path = export_model(model, "exports", "dashclip_two_tower")   # exports/dashclip_two_tower/<version>/
    scores = load_serving_fn(path)(**features)["probability"]

The signature takes every raw input by name with an explicit dtype and shape (int64 / string ids [B], float32
dense [B], float32 embeddings [B, embedding_dim]) and returns `probability` [B] and `logit` [B]; vocabularies and
normalisation are inside the graph, so `tf.saved_model.load` needs no project code. Versions are integers that
only grow; each is written to a temporary folder and renamed (TensorFlow Serving's layout, DESIGN.md section 7).
The serving issue adds the tf.Example signature, warm-up requests and the registry on top of this.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from ranking._tf import tf
from ranking.data import FeatureSpec, input_signature
from ranking.models import PCTRModel, build_model


class _Serving(tf.Module):
    """Holds the model's variables and the signature function; no optimizer, no training state."""

    def __init__(self, model: PCTRModel):
        super().__init__()
        self.model = model
        spec = model.spec
        signature = {name: input_signature(spec, name) for name in spec.inputs}

        @tf.function(input_signature=[signature])
        def serve(features):
            logits = self.model(features, training=False)  # [B]
            return {"probability": tf.sigmoid(logits), "logit": logits}

        self.serve = serve


def next_version(root: Path) -> int:
    """1 + the highest integer version folder under root (1 for none)."""
    versions = [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    return max(versions, default=0) + 1


def export_model(model: PCTRModel, export_dir: str | Path, model_name: str, extra_assets: dict | None = None) -> Path:
    """Write `<export_dir>/<model_name>/<version>/` and return it. The model is copied into a fresh instance
    first, so the SavedModel holds the weights only (no optimizer slots)."""
    root = Path(export_dir) / model_name
    root.mkdir(parents=True, exist_ok=True)
    version = next_version(root)
    tmp = root / f".tmp-{version}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    clean = build_model(model.kind, model.spec, model.prep, model.net)
    tf.train.Checkpoint(model=model).write(str(tmp / "weights" / "ckpt"))  # matched by object path, not order
    tf.train.Checkpoint(model=clean).read(str(tmp / "weights" / "ckpt")).expect_partial()
    shutil.rmtree(tmp)
    _check_same_weights(model, clean)
    module = _Serving(clean)
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel("ERROR")  # Keras's "skipping full serialization" notes: this export needs no Keras config
    try:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
    finally:
        logger.setLevel(level)
    extra = tmp / "assets.extra"
    extra.mkdir(exist_ok=True)
    info = {"model": model.kind, "feature_spec": model.spec.to_dict(), "inputs": signature_description(model.spec)}
    info.update(extra_assets or {})
    (extra / "model_info.json").write_text(json.dumps(info, indent=1, default=str))
    final = root / str(version)
    while final.exists():  # another writer took this version meanwhile
        version += 1
        final = root / str(version)
    os.replace(tmp, final)
    return final


def _check_same_weights(a: PCTRModel, b: PCTRModel) -> None:
    if len(a.trainable_weights) != len(b.trainable_weights) or not all(
            np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.trainable_weights, b.trainable_weights)):
        raise RuntimeError("export: the weights did not copy into the serving model")


def signature_description(spec: FeatureSpec) -> dict[str, dict]:
    """{input: {dtype, shape}} as the signature declares them."""
    out = {}
    for name in spec.inputs:
        s = input_signature(spec, name)
        out[name] = {"dtype": s.dtype.name, "shape": [-1 if d is None else d for d in s.shape.as_list()]}
    return out


def load_serving_fn(path: str | Path):
    """The `serving_default` function of a SavedModel (call it with keyword tensors)."""
    return tf.saved_model.load(str(path)).signatures["serving_default"]


def serving_predict(fn, columns: dict[str, np.ndarray], spec: FeatureSpec, batch_size: int = 16384) -> np.ndarray:
    """P(click) through a loaded signature for numpy columns (row order kept)."""
    n = len(columns[spec.inputs[0]])
    out = []
    for start in range(0, n, batch_size):
        feed = {name: tf.constant(columns[name][start:start + batch_size]) for name in spec.inputs}
        out.append(fn(**feed)["probability"].numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)
