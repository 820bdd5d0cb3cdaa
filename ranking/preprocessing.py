"""Preprocessing statistics of the neural models, fitted on the train split only (numpy, no TensorFlow).

`fit_preprocessing` gives the vocabularies and the dense-feature means and standard deviations;
ranking.models.FeatureEncoder applies them in-graph, so an exported SavedModel serves raw values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ranking.config import FeatureConfig
from ranking.training_set import FeatureSpec, Split, dense_features


@dataclass
class Preprocessing:
    """Vocabularies and dense-feature statistics from the train split: everything the encoder needs."""

    vocabularies: dict[str, list]  # id feature -> its train values (most frequent first); others are OOV
    oov_buckets: int
    dense_names: tuple[str, ...]  # encoder output columns: spec.dense then the CTR logits
    mean: list[float]  # of each dense_names column after impute / log1p / CTR
    std: list[float]
    impute: dict[str, float]  # raw-unit train means filled into NaNs (empty: nan_policy=fail, NaN passes)
    base_rate: float
    ctr_prior_strength: float
    clip: float  # standardised values are clipped to [-clip, clip]

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def fit_preprocessing(train: Split, spec: FeatureSpec, fc: FeatureConfig, impute: dict[str, float]) -> Preprocessing:
    """Vocabularies (ids seen >= min_id_count times, at most max_vocab) and dense means/stds, from train."""
    vocabularies = {}
    for name in spec.ids:
        values, counts = np.unique(train.columns[name], return_counts=True)
        order = np.argsort(-counts, kind="stable")
        keep = order[counts[order] >= fc.min_id_count][: fc.max_vocab]
        if keep.size == 0:
            keep = order[:1]
        kept = values[keep]
        if name in spec.str_ids:
            vocabularies[name] = [v.decode("utf-8") for v in kept.tolist()]
        else:
            vocabularies[name] = [int(v) for v in kept if v != -1]  # -1 is IntegerLookup's OOV token
    base_rate = float(train.labels.mean())
    x = dense_features(train.columns, spec, base_rate, fc.ctr_prior_strength)
    std = x.std(axis=0)
    return Preprocessing(
        vocabularies=vocabularies,
        oov_buckets=fc.oov_buckets,
        dense_names=spec.dense + tuple(name for name, _, _ in spec.ctr_pairs),
        mean=[float(v) for v in x.mean(axis=0)],
        std=[float(v) if v > 1e-6 else 1.0 for v in std],
        impute=dict(impute) if fc.nan_policy == "impute" else {},
        base_rate=base_rate,
        ctr_prior_strength=fc.ctr_prior_strength,
        clip=fc.dense_clip,
    )
