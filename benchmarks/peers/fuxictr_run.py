"""FuxiCTR 2.3.10: DCN, DNN and LR on a prepared fold; prints one JSON line. (Skeleton: FuxiCTR's feature
processing is bypassed by feeding its models our already-encoded columns through its FeatureMap.)

    .bench-venvs/fuxictr/bin/python benchmarks/peers/fuxictr_run.py <training-set folder> <seed>
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from common import metrics, read_fold  # noqa: E402


def _feature_map(sparse, dense, vocab):
    from fuxictr.features import FeatureMap

    fmap = FeatureMap("bench", "")
    fmap.labels = ["click"]
    for c in sparse:
        fmap.features[c] = {"type": "categorical", "source": "", "vocab_size": vocab[c] + 1, "padding_idx": 0}
    for c in dense:
        fmap.features[c] = {"type": "numeric", "source": ""}
    fmap.set_column_index()
    fmap.num_fields = len(sparse) + len(dense)
    return fmap


def main(folder: str, seed: int) -> None:
    import numpy as np
    import torch
    from fuxictr.pytorch.models import BaseModel  # noqa: F401
    from fuxictr.pytorch.torch_utils import seed_everything
    from model_zoo import DCN, DNN, LR  # noqa: F401  (FuxiCTR's model_zoo, installed beside it)

    train, valid, test, sparse, dense, vocab = read_fold(folder)
    fmap = _feature_map(sparse, dense, vocab)
    out = {}
    for name in ("dcn", "dnn", "lr"):
        seed_everything(seed)
        params = dict(model_id=f"{name}_{seed}", gpu=-1, learning_rate=1e-3, embedding_dim=16, batch_size=128,
                      epochs=4, net_dropout=0, batch_norm=False, embedding_regularizer=0, net_regularizer=0,
                      dnn_hidden_units=[256, 128], num_cross_layers=3, optimizer="adam", loss="binary_crossentropy",
                      metrics=["logloss", "AUC"], task="binary_classification", monitor="AUC", monitor_mode="max",
                      model_root="/tmp/fuxictr_bench", verbose=0, early_stop_patience=1, seed=seed)
        model = {"dcn": DCN, "dnn": DNN, "lr": LR}[name](fmap, **params)
        cols = sparse + dense + ["click"]
        to = lambda df: torch.utils.data.DataLoader(  # noqa: E731
            torch.utils.data.TensorDataset(torch.tensor(df[cols].to_numpy(np.float32))), batch_size=128)
        started = time.perf_counter()
        model.fit(to(train), validation_data=to(valid), epochs=4)
        p = model.predict(to(test))
        out[name] = metrics(test["click"].values, p)
        out[name]["fit_seconds"] = time.perf_counter() - started
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
