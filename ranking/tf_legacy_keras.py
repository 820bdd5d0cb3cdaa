"""The one way ranking modules import TensorFlow: `from ranking.tf_legacy_keras import tf, tfrs`.

tensorflow-recommenders needs Keras 2, which TensorFlow 2.16+ only gives through tf-keras when TF_USE_LEGACY_KERAS=1
is set before TensorFlow is first imported (docs/design.md, section 6). Setting it here, in the modules that need
TensorFlow, keeps `core.metrics`, the training-set reader and the baselines free of a TensorFlow import.

A quiet start-up, unless the user asks otherwise: TF_CPP_MIN_LOG_LEVEL defaults to 2 (C++ warnings and errors
only). TensorFlow 2.21 still prints its start-up banners ("oneDNN custom operations are on", "Could not find cuda
drivers", absl's "All log messages before absl::InitializeLog() ...") straight to file descriptor 2 while its shared
libraries load, whatever that level says, and "failed call to cuInit" when it first probes for GPUs. So the import and
that first probe run with stderr captured, and every captured line except those banners is written back. GPUs stay
visible: hiding them (CUDA_VISIBLE_DEVICES) does not stop the probe and would move a GPU machine's work to its CPU.
TF_CPP_MIN_LOG_LEVEL=0 in the environment shows everything.

(Not named tf_keras.py: `tf_keras` is the real package that TF_USE_LEGACY_KERAS loads.)
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

STARTUP_NOISE = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
                 "Could not find cuda drivers", "failed call to cuInit")


@contextlib.contextmanager
def _without_startup_noise():
    """File descriptor 2 goes to a temporary file for the block; its lines come back without the banners."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":  # the user wants to see everything
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not any(noise in line for noise in STARTUP_NOISE))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


if "tensorflow" in sys.modules:
    import tensorflow as tf
else:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _without_startup_noise():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")  # the CUDA probe, now rather than at the first op

if not tf.keras.__name__.startswith("tf_keras"):
    raise ImportError(
        "ranking needs tf-keras (Keras 2): TensorFlow was imported before TF_USE_LEGACY_KERAS=1 was set. "
        "Set TF_USE_LEGACY_KERAS=1 in the environment, or import ranking modules before tensorflow.")

import tensorflow_recommenders as tfrs  # noqa: E402  (after the tf-keras check: TFRS builds on tf.keras)

__all__ = ["tf", "tfrs"]
