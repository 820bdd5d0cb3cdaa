"""Online scoring: one request (a user, a query, N candidate ads) -> online features -> SavedModel -> ranked ads.

    store = feature_store.online.OnlineFeatures("data/demo", embedding_version)   # built by the caller
    ranker = OnlineRanker("exports/dashclip_two_tower/3", features=store)          # the A/B simulation's entry point
    ranked = ranker.rank(user_id=7, query_id=42, product_ids=[...], ad_ids=[...],
                         context={"ts": now, "device": "app", "position": [1, 2, ...], "discount": [...],
                                  "store_distance_km": [...], "campaign_id": [...], "advertiser_id": [...]})
    ranked  # DataFrame product_id, ad_id, probability: highest probability first

    p = ranker.score(features)   # features already fetched: {input: [N] or [N, dim] array} -> float32 [N]

`score` checks every model input (name, dtype, shape; model_info.json of the export is the contract) and raises a
ValueError naming the input, then calls the `serving_default` concrete function once: no Keras, no `predict`
(docs/design.md, section 10: `predict_on_batch` costs 3-5x the signature call). Unknown ids need no special handling:
the exported graph maps ids it never saw in training to its OOV buckets.

`rank` fills the model inputs from three places, in this order: the request's ids (user_id and query_id, repeated
per candidate; product_id and ad_id), the online features of the injected feature source (`features=`, any object
with the `OnlineFeatureSource` method below; feature_store.online.OnlineFeatures serves every training-set feature
except ids, ts and labels), and `context` entries of the same name (a scalar for the whole request or one value per
candidate; e.g. campaign_id and advertiser_id, which the ad server knows with the candidates and the feature store
does not serve). An input found in none of them is a ValueError naming it. The ranker never imports the feature
store: the caller builds the source (a store client, a fake in tests) and passes it in.

For latency measurements, `single_thread=True` (or `set_single_thread()` before anything runs in TensorFlow) pins
TensorFlow to one intra-op and one inter-op thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Protocol

import numpy as np
import pandas as pd

from ranking.serving.contract import check_signature, read_model_info, resolve_version_dir
from ranking.tf_legacy_keras import tf

# Accepted numpy kinds per declared dtype; values of these kinds are cast, anything else is a dtype error.
_KINDS = {"int64": "iu", "float32": "fiu", "string": "SUO"}
_NUMPY = {"int64": np.int64, "float32": np.float32, "string": None}
REQUEST_IDS = ("user_id", "query_id", "product_id", "ad_id")


class OnlineFeatureSource(Protocol):
    """What OnlineRanker asks of an online feature store (feature_store.online.OnlineFeatures is one).

    get(...) returns {feature name: numpy array of one value ([N]) or one vector ([N, dim]) per candidate, in the
    candidates' order} for the request; the ranker takes the model inputs it finds there. An optional
    `embedding_dim` attribute is checked against the model's embedding inputs when the ranker is built.
    """

    def get(self, user_id: int, query_id: int, product_ids: list[int], context: dict,
            ad_ids: list[int] | None = None) -> Mapping[str, np.ndarray]: ...


def set_single_thread() -> None:
    """One intra-op and one inter-op thread for TensorFlow (call before TensorFlow has run anything)."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError as e:
        raise RuntimeError("set_single_thread: TensorFlow has already run an op in this process, so its thread "
                           "pools are fixed; call it (or OnlineRanker(..., single_thread=True)) first") from e


def _flat_call(fn):
    """{input: tensor} -> the signature's outputs, through the concrete function's flat call: the inputs in its
    flat order (the structured signature's, names sorted) and its captured variables. The structured call
    `fn(**inputs)` binds and type-checks its arguments in Python on every call (~0.5-1 ms of a ~4 ms request on
    one core); `score` checks the inputs against model_info.json itself, and OnlineRanker checks at load that
    the signature takes exactly those inputs. The structured call where this TensorFlow has no flat call."""
    flat_call = getattr(fn, "_call_flat", None)
    if flat_call is None:
        return lambda inputs: fn(**inputs)
    inputs = fn.structured_input_signature[1]
    order = tf.nest.flatten({name: name for name in inputs})  # nest's order of the signature's input dict
    captured = fn.captured_inputs
    return lambda inputs: flat_call([inputs[name] for name in order], captured)


class OnlineRanker:
    """Scores and ranks one request's candidates with an exported SavedModel.

    model_dir: `<export_dir>/<model>/<version>/`, or `<export_dir>/<model>/` for its highest version.
    features: the online feature source `rank` fetches from (an `OnlineFeatureSource` the caller builds: e.g.
    feature_store.online.OnlineFeatures(data_dir, <the embedding_version in the export's model_info.json>), a
    shared store client, or a fake in tests); `score` needs none. single_thread: see set_single_thread.
    """

    def __init__(self, model_dir: str | Path, features: OnlineFeatureSource | None = None,
                 single_thread: bool = False):
        if single_thread:
            set_single_thread()
        self.model_dir = resolve_version_dir(model_dir)
        self.info = read_model_info(self.model_dir)
        self._loaded = tf.saved_model.load(str(self.model_dir))  # keeps the variables alive
        self._fn = self._loaded.signatures["serving_default"]
        check_signature(self._fn, self.info["inputs"], self.model_dir)  # score feeds model_info.json's inputs
        # Precomputed once: (name, dtype, numpy dtype, embedding width or None) in signature order.
        self._inputs = []
        for name, entry in self.info["inputs"].items():
            shape = entry["shape"]
            self._inputs.append((name, entry["dtype"], _NUMPY[entry["dtype"]], shape[1] if len(shape) == 2 else None))
        self._constant = tf.constant
        self._call = _flat_call(self._fn)
        self.embedding_version = self.info.get("embedding_version")  # what the model was trained on
        self.feature_source = features
        dims = {width for _, _, _, width in self._inputs if width}
        store_dim = getattr(features, "embedding_dim", None)
        if store_dim is not None and dims and store_dim not in dims:
            raise ValueError(f"the online store's embeddings have width {store_dim}, the model {self.model_dir} "
                             f"expects {sorted(dims)} (embedding_version {self.embedding_version})")

    @property
    def input_names(self) -> list[str]:
        return [name for name, _, _, _ in self._inputs]

    def _checked(self, features) -> tuple[dict[str, np.ndarray], int]:
        """The model inputs checked against model_info.json and cast to their declared dtypes (numpy), and the
        candidate count N (the first input's length)."""
        feed, n = {}, None
        for name, dtype, np_dtype, width in self._inputs:
            if name not in features:
                shape = f"[N, {width}]" if width else "[N]"
                raise ValueError(f"missing model input '{name}' ({dtype}, shape {shape})")
            values = np.asarray(features[name])
            if n is None:
                if values.ndim == 0:
                    raise ValueError(f"input '{name}': expected one value per candidate, got a scalar")
                n = len(values)
            if n == 0 and values.size == 0:  # no candidates: any empty array will do
                feed[name] = values
                continue
            if width is None and values.shape != (n,):
                raise ValueError(f"input '{name}': expected shape [{n}] (one value per candidate), got "
                                 f"{list(values.shape)}")
            if width is not None and values.shape != (n, width):
                raise ValueError(f"input '{name}': expected an embedding of shape [{n}, {width}], got "
                                 f"{list(values.shape)}")
            kind = values.dtype.kind
            if kind not in _KINDS[dtype] or (kind == "O" and not isinstance(values[0], (bytes, str))):
                got = type(values[0]).__name__ if kind == "O" else values.dtype
                raise ValueError(f"input '{name}': expected {dtype} values, got {got}")
            if np_dtype is not None and values.dtype != np_dtype:
                values = values.astype(np_dtype)
            feed[name] = values
        return feed, n

    def score(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """P(click) per candidate, float32 [N], in the candidates' order. features: {input: [N] or [N, dim]}."""
        feed, n = self._checked(features)
        if n == 0:
            return np.zeros(0, np.float32)
        constant = self._constant
        out = self._call({name: constant(values) for name, values in feed.items()})
        return out["probability"].numpy()

    def model_inputs(self, user_id: int, query_id: int, product_ids, ad_ids, context: dict) -> dict[str, np.ndarray]:
        """Every model input for one request: request ids, online features, then context entries (see module)."""
        if self.feature_source is None:
            raise ValueError("OnlineRanker has no feature source: pass features=<an OnlineFeatureSource> to rank")
        product_ids = np.asarray(product_ids, np.int64)
        n = len(product_ids)
        fetched = self.feature_source.get(user_id, query_id, product_ids.tolist(), context, ad_ids=list(ad_ids))
        out = {"user_id": np.full(n, user_id, np.int64), "query_id": np.full(n, query_id, np.int64),
               "product_id": product_ids, "ad_id": np.asarray(ad_ids, np.int64)}
        for name in self.input_names:
            if name in out:
                continue
            if name in fetched:
                out[name] = fetched[name]
            elif name in context:
                value = np.asarray(context[name])
                out[name] = np.repeat(value[None], n, axis=0) if value.ndim == 0 else value
            else:
                raise ValueError(f"model input '{name}' is neither a request id ({', '.join(REQUEST_IDS)}), nor an "
                                 f"online feature, nor in the request context: pass context['{name}']")
        return out

    def rank(self, user_id: int, query_id: int, product_ids, ad_ids, context: dict) -> pd.DataFrame:
        """Candidates as a DataFrame (product_id, ad_id, probability), highest probability first (ties keep
        the candidates' order)."""
        inputs = self.model_inputs(user_id, query_id, product_ids, ad_ids, context)
        probability = self.score(inputs)
        order = np.argsort(-probability, kind="stable")
        return pd.DataFrame({"product_id": inputs["product_id"][order], "ad_id": inputs["ad_id"][order],
                             "probability": probability[order]})
