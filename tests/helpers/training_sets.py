"""A tiny synthetic training set that follows the feature store's training-set contract, with a planted signal.

    data/<name>/training_sets/<version>/{train,valid,test}/part-00000.parquet + metadata.json
    data/<name>/hidden/impression_truth/part-00000.parquet   (click_prob per impression_id: the oracle)

Clicks depend on cos(product_embedding, query_embedding) (strongly), cos(product_embedding, history_embedding),
position and a per-product effect. Products arriving after the train days exist only in valid/test, so ids cannot
help there but embeddings can: a model that really uses tower B beats `dcn` and the baselines on the test split.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DAYS = {"train": (0, 10), "valid": (10, 12), "test": (12, 14)}
START = datetime(2026, 1, 5, tzinfo=timezone.utc)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_training_set(root: str | Path, name: str = "synth", n_requests: int = 3000, slots: int = 8,
                      dim: int = 16, seed: int = 0, version: str = "synth-v1") -> Path:
    """Write the synthetic world under root/name; returns the training-set folder."""
    rng = np.random.default_rng(seed)
    data_dir = Path(root) / name
    n_topics, n_products, n_queries, n_users = 8, 400, 150, 300
    centers = _unit(rng.normal(size=(n_topics, dim)))
    p_topic = rng.integers(0, n_topics, n_products)
    q_topic = rng.integers(0, n_topics, n_queries)
    u_topic = rng.integers(0, n_topics, n_users)
    p_emb = _unit(centers[p_topic] + 0.35 * rng.normal(size=(n_products, dim))).astype(np.float32)
    q_emb = _unit(centers[q_topic] + 0.35 * rng.normal(size=(n_queries, dim))).astype(np.float32)
    has_history = rng.random(n_users) > 0.3
    h_emb = _unit(centers[u_topic] + 0.5 * rng.normal(size=(n_users, dim))).astype(np.float32)
    h_emb[~has_history] = 0.0
    history_count = np.where(has_history, rng.integers(1, 30, n_users), 0).astype(np.float32)
    p_effect = rng.normal(0.0, 0.5, n_products)
    new_product = np.arange(n_products) >= int(0.7 * n_products)  # arrive on day 10
    arrival_day = np.where(new_product, 10, rng.integers(-60, 9, n_products))
    price = rng.lognormal(1.2, 0.5, n_products).astype(np.float32)
    discount = np.where(rng.random(n_products) < 0.3, rng.uniform(0.05, 0.4, n_products), 0.0).astype(np.float32)
    rating = rng.uniform(3.0, 5.0, n_products).astype(np.float32)
    rating_count = rng.integers(0, 500, n_products).astype(np.int32)
    q_weight = 1.0 / np.arange(1, n_queries + 1) ** 0.9  # Zipf: a head and a long tail
    q_weight /= q_weight.sum()

    n = n_requests * slots
    day = np.sort(rng.integers(0, 14, n_requests))
    request_q = rng.choice(n_queries, n_requests, p=q_weight)
    request_u = rng.integers(0, n_users, n_requests)
    rows_day = np.repeat(day, slots)
    query = np.repeat(request_q, slots)
    user = np.repeat(request_u, slots)
    # Candidates: half from the query's topic, half random; new products only once they exist.
    product = np.empty(n, dtype=np.int64)
    for r in range(n_requests):
        pool = np.flatnonzero(arrival_day <= day[r])
        topical = pool[p_topic[pool] == q_topic[request_q[r]]]
        k = slots // 2
        pick = np.concatenate([rng.choice(topical, k, replace=len(topical) < k), rng.choice(pool, slots - k)])
        product[r * slots:(r + 1) * slots] = rng.permutation(pick)
    position = np.tile(np.arange(1, slots + 1), n_requests).astype(np.int8)
    cos_pq = np.einsum("nd,nd->n", p_emb[product], q_emb[query])
    cos_ph = np.einsum("nd,nd->n", p_emb[product], h_emb[user])
    logit = (-3.0 + 3.5 * cos_pq + 1.5 * cos_ph - 0.25 * (position - 1) + p_effect[product]
             + 2.0 * discount[product])
    click_prob = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    click = (rng.random(n) < click_prob).astype(np.int8)
    conversion = (click & (rng.random(n) < 0.3)).astype(np.int8)
    ts = np.array([START + timedelta(days=int(d), seconds=int(s)) for d, s in
                   zip(rows_day, rng.integers(0, 86400, n))])

    # Point-in-time-looking historical counts (noisy but consistent with the true CTR).
    product_imps = rng.poisson(6 * np.minimum(rows_day - arrival_day[product], 7)).astype(np.float32)
    product_ctr = 1.0 / (1.0 + np.exp(2.5 - p_effect - 2.0 * discount))  # the product's average CTR, not this row's
    product_clicks = rng.binomial(product_imps.astype(np.int64), product_ctr[product]).astype(np.float32)
    query_imps = (q_weight[query] * 20000).astype(np.float32)
    query_clicks = np.round(query_imps * 0.12).astype(np.float32)

    table = pa.table({
        "impression_id": pa.array(np.arange(n, dtype=np.int64)),
        "request_id": pa.array(np.repeat(np.arange(n_requests, dtype=np.int64), slots)),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "user_id": pa.array(user.astype(np.int64)),
        "query_id": pa.array(query.astype(np.int64)),
        "product_id": pa.array(product),
        "ad_id": pa.array(product + 1_000_000),
        "campaign_id": pa.array(product // 10),
        "advertiser_id": pa.array(product // 40),
        "store_id": pa.array(product % 7),
        "position": pa.array(position),
        "device": pa.array(np.array(["ios", "android", "web"])[rng.integers(0, 3, n)]),
        "aisle": pa.array(np.array([f"aisle {t}" for t in range(n_topics)])[p_topic[product]]),
        "brand": pa.array(np.array([f"brand {b}" for b in range(25)])[product % 25]),
        "price": pa.array(price[product]),
        "discount": pa.array(discount[product]),
        "rating": pa.array(rating[product]),
        "rating_count": pa.array(rating_count[product]),
        "store_distance_km": pa.array(rng.uniform(0.5, 20.0, n).astype(np.float32)),
        "product_age_days": pa.array((rows_day - arrival_day[product]).astype(np.float32)),
        "product_impressions_7d": pa.array(product_imps),
        "product_clicks_7d": pa.array(product_clicks),
        "query_impressions_7d": pa.array(query_imps),
        "query_clicks_7d": pa.array(query_clicks),
        "history_count": pa.array(history_count[user]),
        "product_embedding": pa.array(list(p_emb[product]), pa.list_(pa.float32())),
        "query_embedding": pa.array(list(q_emb[query]), pa.list_(pa.float32())),
        "history_embedding": pa.array(list(h_emb[user]), pa.list_(pa.float32())),
        "click": pa.array(click),
        "conversion": pa.array(conversion),
    })
    folder = data_dir / "training_sets" / version
    bounds = {}
    for split, (lo, hi) in DAYS.items():
        mask = (rows_day >= lo) & (rows_day < hi)
        (folder / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(pa.array(mask)), folder / split / "part-00000.parquet")
        bounds[split] = [(START + timedelta(days=lo)).isoformat(), (START + timedelta(days=hi)).isoformat()]
    counts = [c for c in table.column_names if c.endswith("_7d")]
    metadata = {
        "embedding_version": version, "embedding_dim": dim, "splits": bounds, "data_dir": str(data_dir),
        "features": {"count_features": counts, "embedding_features": ["product_embedding", "query_embedding",
                                                                       "history_embedding"]},
        "defaults": {"embedding": "zero vector", "counts": 0.0},
    }
    (folder / "metadata.json").write_text(json.dumps(metadata, indent=2))
    truth = pa.table({"impression_id": table.column("impression_id"), "click_prob": pa.array(click_prob),
                      "true_label": pa.array(np.zeros(n, np.int8))})
    (data_dir / "hidden" / "impression_truth").mkdir(parents=True, exist_ok=True)
    pq.write_table(truth, data_dir / "hidden" / "impression_truth" / "part-00000.parquet")
    return folder


def rewrite_split(folder: Path, split: str, edit) -> None:
    """Replace a split's parquet with edit(table) (for the bad-input tests)."""
    path = Path(folder) / split / "part-00000.parquet"
    pq.write_table(edit(pq.read_table(path)), path)


def numpy_columns(table: pa.Table, inputs: dict) -> dict[str, np.ndarray]:
    """The model inputs (model_info.json "inputs") of a table as numpy with the training set's own dtypes (int8
    position, int32 rating_count, str ids, [n, dim] embeddings): written independently of the code under test."""
    out = {}
    for name, entry in inputs.items():
        values = table.column(name).to_pylist()
        out[name] = (np.array(values, np.float32) if len(entry["shape"]) == 2
                     else np.array(values, dtype=object) if entry["dtype"] == "string"
                     else table.column(name).to_numpy())
    return out
