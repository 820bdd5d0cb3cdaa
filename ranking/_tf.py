"""The one way ranking modules import TensorFlow: `from ranking._tf import tf, tfrs`.

tensorflow-recommenders needs Keras 2, which TensorFlow 2.16+ only gives through tf-keras when
TF_USE_LEGACY_KERAS=1 is set before TensorFlow is first imported (DESIGN.md section 6). Setting it here, in the
modules that need TensorFlow, keeps `core.metrics` and the baselines free of a TensorFlow import.
"""

from __future__ import annotations

import os
import sys

if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide the CUDA-probe and oneDNN banners on CPU machines

import tensorflow as tf  # noqa: E402

if not tf.keras.__name__.startswith("tf_keras"):
    raise ImportError(
        "ranking needs tf-keras (Keras 2): TensorFlow was imported before TF_USE_LEGACY_KERAS=1 was set. "
        "Set TF_USE_LEGACY_KERAS=1 in the environment, or import ranking modules before tensorflow.")

import tensorflow_recommenders as tfrs  # noqa: E402

__all__ = ["tf", "tfrs"]
