"""DeepCTR 0.9.4: DCN (vector cross, its default), DNN and LR on a prepared fold; prints one JSON line.

    .bench-venvs/deepctr/bin/python benchmarks/peers/deepctr_run.py <training-set folder> <seed>
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, os.path.dirname(__file__))

from common import metrics, read_fold  # noqa: E402


def main(folder: str, seed: int) -> None:
    import tensorflow as tf
    from deepctr.feature_column import DenseFeat, SparseFeat, get_feature_names
    from deepctr.models import DCN, DeepFM  # noqa: F401

    train, valid, test, sparse, dense, vocab = read_fold(folder)
    columns = [SparseFeat(c, vocabulary_size=vocab[c], embedding_dim=16) for c in sparse] + \
              [DenseFeat(c, 1) for c in dense]
    names = get_feature_names(columns)
    x = {s: {n: df[n].values for n in names} for s, df in (("train", train), ("valid", valid), ("test", test))}
    out = {}
    for model_name in ("dcn", "dnn", "lr"):
        tf.keras.utils.set_random_seed(seed)
        if model_name == "dcn":
            model = DCN(columns, columns, cross_num=3, cross_parameterization="vector", dnn_hidden_units=(256, 128),
                        seed=seed)
        elif model_name == "dnn":
            model = DCN(columns, columns, cross_num=0, dnn_hidden_units=(256, 128), seed=seed)
        else:  # DeepCTR's linear logit alone (what its models add as their wide part)
            from deepctr.feature_column import build_input_features, get_linear_logit
            from deepctr.layers import PredictionLayer

            inputs = build_input_features(columns)
            logit = get_linear_logit(inputs, columns, seed=seed, prefix="linear", l2_reg=1e-5)
            model = tf.keras.models.Model(inputs=list(inputs.values()), outputs=PredictionLayer("binary")(logit))
        model.compile("adam", "binary_crossentropy")
        started = time.perf_counter()
        stop = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
        model.fit(x["train"], train["click"].values, batch_size=128, epochs=4, verbose=0,
                  validation_data=(x["valid"], valid["click"].values), callbacks=[stop])
        out[model_name] = metrics(test["click"].values, model.predict(x["test"], batch_size=4096, verbose=0))
        out[model_name]["fit_seconds"] = time.perf_counter() - started
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
