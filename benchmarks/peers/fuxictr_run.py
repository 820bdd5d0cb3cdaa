"""FuxiCTR 2.3.10: its DCN, DNN and LR (fuxictr_zoo/, FuxiCTR's own model_zoo classes) on a prepared fold; prints
one JSON line.

    .bench-venvs/fuxictr/bin/python benchmarks/peers/fuxictr_run.py <training-set folder> <seed>
    .bench-venvs/fuxictr/bin/python benchmarks/peers/fuxictr_run.py <folder> <seed> --throughput EPOCHS [--threads 2]

Every library gets the same inputs (common.read_fold: our integer-encoded id columns and standardised dense
columns), so FuxiCTR's FeatureProcessor is not run; its FeatureMap is filled from those columns the way the
processor would fill it (categorical with vocab_size and padding index 0, numeric), and batches are the dicts of
tensors its BaseModel.fit / predict read (BaseModel.get_inputs, get_labels). Training is FuxiCTR's own: its fit loop
(Adam, gradient clipping at 10, validation AUC each epoch, early stopping with patience 1 and reload of the best
weights), its embedding and dense initialisers.

--throughput: the DCN alone at batch 4096 on the train split, torch.set_num_threads(threads), no validation: its
BaseModel.train_step (forward, loss with its regularisers, backward, gradient clipping, Adam) over every batch of
each epoch, i.e. its fit loop without the evaluation; prints the examples/s (the clock runs around those epochs
only: the model is built and the batches' tensors made before it starts).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

from common import main, metrics, rate, read_fold  # noqa: E402

EPOCHS, BATCH, EMBEDDING_DIM = 4, 128, 16  # the protocol every library runs (benchmarks/ctr_bench.py)


def feature_map(sparse: list[str], dense: list[str], vocab: dict[str, int]):
    from fuxictr.features import FeatureMap

    fmap = FeatureMap("bench", "")
    fmap.labels = ["click"]
    fmap.default_emb_dim = EMBEDDING_DIM  # FeatureMap.load sets it from the model's embedding_dim
    for c in sparse:  # our ids start at 1 (0 = unknown), so index 0 can be FuxiCTR's padding row
        fmap.features[c] = {"type": "categorical", "source": "", "vocab_size": vocab[c] + 1, "padding_idx": 0}
    for c in dense:
        fmap.features[c] = {"type": "numeric", "source": ""}
    fmap.num_fields = fmap.get_num_fields()
    fmap.set_column_index()
    return fmap


class Batches:
    """What FuxiCTR's loaders yield: per batch a dict {column: tensor}, ids as int64, numerics and the label as
    float32; len() is the number of batches (fit reads it for its epoch length)."""

    def __init__(self, frame, sparse: list[str], dense: list[str], batch_size: int, shuffle: bool, seed: int):
        import numpy as np
        import torch

        self.columns = {c: torch.as_tensor(frame[c].to_numpy(np.int64)) for c in sparse}
        self.columns.update({c: torch.as_tensor(frame[c].to_numpy(np.float32)) for c in [*dense, "click"]})
        self.n, self.batch_size, self.shuffle = len(frame), batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        import torch

        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        for start in range(0, self.n, self.batch_size):
            rows = order[start:start + self.batch_size]
            yield {c: t[rows] for c, t in self.columns.items()}


def dcn_params() -> dict:
    return dict(embedding_dim=EMBEDDING_DIM, dnn_hidden_units=[256, 128], num_cross_layers=3, net_dropout=0,
                batch_norm=False)


def accuracy(folder: str, seed: int) -> dict:
    from fuxictr.pytorch.torch_utils import seed_everything
    from fuxictr_zoo import DCN, DNN, LR

    train, valid, test, sparse, dense, vocab = read_fold(folder)
    fmap = feature_map(sparse, dense, vocab)
    common = dict(gpu=-1, learning_rate=1e-3, optimizer="adam", loss="binary_crossentropy",
                  metrics=["logloss", "AUC"], task="binary_classification", monitor="AUC", monitor_mode="max",
                  early_stop_patience=1, verbose=0, seed=seed)
    models = {"dcn": (DCN, dcn_params()),
              "dnn": (DNN, dict(embedding_dim=EMBEDDING_DIM, hidden_units=[256, 128], net_dropout=0,
                                batch_norm=False)),
              "lr": (LR, {})}
    out = {}
    with tempfile.TemporaryDirectory() as root:  # fit saves the best weights there and reloads them at the end
        for name, (cls, params) in models.items():
            seed_everything(seed)
            model = cls(fmap, model_id=f"{name}_{seed}", model_root=root, **common, **params)
            os.makedirs(model.model_dir, exist_ok=True)  # FuxiCTR's run_expid.py makes it before fit
            started = time.perf_counter()
            model.fit(Batches(train, sparse, dense, BATCH, True, seed), epochs=EPOCHS,
                      validation_data=Batches(valid, sparse, dense, 4096, False, seed))
            p = model.predict(Batches(test, sparse, dense, 4096, False, seed))
            out[name] = metrics(test["click"].values, p)
            out[name]["fit_seconds"] = time.perf_counter() - started
    return out


def throughput(folder: str, seed: int, epochs: int, threads: int) -> dict:
    import torch
    from fuxictr.pytorch.torch_utils import seed_everything
    from fuxictr_zoo import DCN

    torch.set_num_threads(threads)
    train, _, _, sparse, dense, vocab = read_fold(folder)
    fmap = feature_map(sparse, dense, vocab)
    seed_everything(seed)
    with tempfile.TemporaryDirectory() as root:
        model = DCN(fmap, model_id="throughput", model_root=root, gpu=-1, learning_rate=1e-3, optimizer="adam",
                    loss="binary_crossentropy", metrics=["logloss", "AUC"], task="binary_classification", verbose=0,
                    seed=seed, **dcn_params())
    batches = Batches(train, sparse, dense, 4096, True, seed)
    model._max_gradient_norm = 10.0  # what its fit sets before the first train_step
    model.train()
    started = time.perf_counter()
    for _ in range(epochs):
        for batch in batches:
            model.train_step(batch)
    seconds = time.perf_counter() - started
    return rate(epochs * len(train), seconds, vocab)


if __name__ == "__main__":
    main(accuracy, throughput)
