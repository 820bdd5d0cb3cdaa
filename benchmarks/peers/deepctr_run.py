"""DeepCTR 0.9.4: DCN (vector cross, its default), DNN and LR on a prepared fold; prints one JSON line.

    .bench-venvs/deepctr/bin/python benchmarks/peers/deepctr_run.py <training-set folder> <seed>
    .bench-venvs/deepctr/bin/python benchmarks/peers/deepctr_run.py <folder> <seed> --throughput EPOCHS [--threads 2]

--throughput: the DCN alone at batch 4096 on the train split, `threads` TensorFlow intra- and inter-op threads, no
validation; prints the examples/s of model.fit (the clock runs around the fit only: the model is built and
compiled and the inputs are numpy arrays before it starts).
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, os.path.dirname(__file__))

from common import main, metrics, rate, read_fold  # noqa: E402

EMBEDDING_DIM, HIDDEN, CROSS = 16, (256, 128), 3  # the protocol every library runs (benchmarks/ctr_bench.py)


def inputs(sparse, dense, vocab):
    from deepctr.feature_column import DenseFeat, SparseFeat, get_feature_names

    columns = [SparseFeat(c, vocabulary_size=vocab[c], embedding_dim=EMBEDDING_DIM) for c in sparse] + \
              [DenseFeat(c, 1) for c in dense]
    return columns, get_feature_names(columns)


def accuracy(folder: str, seed: int) -> dict:
    import tensorflow as tf
    from deepctr.models import DCN

    train, valid, test, sparse, dense, vocab = read_fold(folder)
    columns, names = inputs(sparse, dense, vocab)
    x = {s: {n: df[n].values for n in names} for s, df in (("train", train), ("valid", valid), ("test", test))}
    out = {}
    for model_name in ("dcn", "dnn", "lr"):
        tf.keras.utils.set_random_seed(seed)
        if model_name == "dcn":
            model = DCN(columns, columns, cross_num=CROSS, cross_parameterization="vector", dnn_hidden_units=HIDDEN,
                        seed=seed)
        elif model_name == "dnn":
            model = DCN(columns, columns, cross_num=0, dnn_hidden_units=HIDDEN, seed=seed)
        else:  # DeepCTR's linear logit alone (what its models add as their wide part)
            from deepctr.feature_column import build_input_features, get_linear_logit
            from deepctr.layers import PredictionLayer

            features = build_input_features(columns)
            logit = get_linear_logit(features, columns, seed=seed, prefix="linear", l2_reg=1e-5)
            model = tf.keras.models.Model(inputs=list(features.values()), outputs=PredictionLayer("binary")(logit))
        model.compile("adam", "binary_crossentropy")
        started = time.perf_counter()
        stop = tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
        model.fit(x["train"], train["click"].values, batch_size=128, epochs=4, verbose=0,
                  validation_data=(x["valid"], valid["click"].values), callbacks=[stop])
        out[model_name] = metrics(test["click"].values, model.predict(x["test"], batch_size=4096, verbose=0))
        out[model_name]["fit_seconds"] = time.perf_counter() - started
    return out


def throughput(folder: str, seed: int, epochs: int, threads: int) -> dict:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))
    from deepctr.models import DCN

    train, _, _, sparse, dense, vocab = read_fold(folder)
    columns, names = inputs(sparse, dense, vocab)
    x, y = {n: train[n].values for n in names}, train["click"].values
    tf.keras.utils.set_random_seed(seed)
    model = DCN(columns, columns, cross_num=CROSS, cross_parameterization="vector", dnn_hidden_units=HIDDEN, seed=seed)
    model.compile("adam", "binary_crossentropy")
    started = time.perf_counter()
    model.fit(x, y, batch_size=4096, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - started
    return rate(epochs * len(train), seconds, vocab)


if __name__ == "__main__":
    main(accuracy, throughput)
