"""ranking.tf_legacy_keras: TensorFlow with tf-keras, and a start-up without TensorFlow's banners and CUDA probes."""

from __future__ import annotations

import os
import subprocess
import sys

from ranking import tf_legacy_keras
from tests.conftest import ROOT


def test_tensorflow_comes_with_tf_keras_and_recommenders():
    assert tf_legacy_keras.tf.keras.__name__.startswith("tf_keras")
    assert tf_legacy_keras.tfrs.layers.dcn.Cross is not None


def test_import_and_first_op_print_no_startup_banners():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    code = "from ranking.tf_legacy_keras import tf; print(int((tf.constant(1) + 1).numpy()))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "2"
    for banner in tf_legacy_keras.STARTUP_NOISE:
        assert banner not in done.stderr, done.stderr


def test_the_filter_keeps_every_other_line(capfd):
    with tf_legacy_keras._without_startup_noise():
        os.write(2, b"I0000 00:00:1.0 port.cc:153] oneDNN custom operations are on. You may see ...\n"
                    b"a real error, kept\n")
        print("python's own stderr, kept", file=sys.stderr)
    err = capfd.readouterr().err
    assert "a real error, kept" in err and "python's own stderr, kept" in err
    assert "oneDNN" not in err
