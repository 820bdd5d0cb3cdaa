"""The simulated marketplace: writes a world's raw tables (docs/design.md) and its hidden ground truth.

    python -m experiments.simulate --config experiments/configs/world/demo.yaml --out data/demo [key=value ...]

Output, written atomically (a temporary sibling folder renamed into place when complete):
    data/<name>/world.json                  config, split boundaries, row counts, summary
    data/<name>/raw/<table>/part-*.parquet  products, queries, relevance, impressions, purchases
    data/<name>/hidden/<table>/...          impression_truth, relevance_truth, retrieval_truth, product_truth, query_truth
Traffic is generated day by day (one impressions part per day), so memory stays flat however many days.
The same seed writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from core.config import ConfigError, add_config_args, config_from_args, config_to_dict, exit_on
from core.files import staged_folder
from core.metrics import auc
from experiments.world import (
    DAY_US, DEVICE_EFFECT, DEVICES, INTENTS, World, WorldConfig, build_world, product_images, rng_for, true_labels,
)
from feature_store.schema import write_table

RAW_TABLES = ("products", "queries", "relevance", "impressions", "purchases")
HIDDEN_TABLES = ("impression_truth", "relevance_truth", "retrieval_truth", "product_truth", "query_truth")
FRESH_DAYS = 14
PRODUCTS_PER_PART = 20_000


# ----------------------------------------------------------------------------------------------------------------
# ids: tables use 1-based int64 ids; arrays inside the simulator use 0-based indices


def product_ids(p: np.ndarray) -> np.ndarray:
    return p.astype(np.int64) + 1


def campaign_ids(world: World, p: np.ndarray) -> np.ndarray:
    return (world.p_brand[p] * len(world.aisle_names) + world.p_aisle[p] + 1).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------------
# candidate retrieval: draw products from contiguous pools, subject to availability and freshness


def pool_bounds(world: World, q: np.ndarray, kind: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) pools for query indices q (any shape) and slot kinds (0 exact, 1 partial, 2 random)."""
    intent = world.q_intent[q]
    # A random target aisle of each slot (aisle and broad intents may have several).
    scores = rng.random(q.shape + (len(world.aisle_names),)) * world.q_aisles[q]
    aisle = scores.argmax(-1)
    has_type = intent <= INTENTS.index("brand_type")
    exact = np.where(has_type[..., None], world.type_range[np.maximum(world.q_type[q], 0)], world.aisle_range[aisle])
    partial = np.where(has_type[..., None], world.aisle_range[aisle], world.dept_range[world.aisle_dept[aisle]])
    everything = np.broadcast_to(np.array([0, world.n_products]), exact.shape)
    bounds = np.where((kind == 0)[..., None], exact, np.where((kind == 1)[..., None], partial, everything))
    return bounds[..., 0], bounds[..., 1]


def draw_products(
    world: World, start: np.ndarray, end: np.ndarray, at_us: np.ndarray, rng: np.random.Generator,
    fresh_boost: float, rounds: int = 40,
) -> np.ndarray:
    """One product per entry from its pool, created before `at_us`; fresh products are favoured by
    (1 + fresh_boost). Entries that find none after `rounds` tries get -1."""
    out = np.full(start.shape, -1, dtype=np.int64)
    todo = np.ones(start.shape, dtype=bool)
    for _ in range(rounds):
        idx = np.flatnonzero(todo)
        if idx.size == 0:
            break
        s, e, t = start.flat[idx], end.flat[idx], at_us.flat[idx]
        cand = s + (rng.random(idx.size) * (e - s)).astype(np.int64)
        age = t - world.p_created_us[cand]
        weight = 1.0 + fresh_boost * (age < FRESH_DAYS * DAY_US)
        ok = (age >= 0) & (rng.random(idx.size) * max(1.0, 1.0 + fresh_boost) < weight)
        out.flat[idx[ok]] = cand[ok]
        todo.flat[idx[ok]] = False
    return out


def duplicate_mask(p: np.ndarray) -> np.ndarray:
    """[R, S] True where a product repeats an earlier slot of the same row (-1 entries never count)."""
    order = np.argsort(p, axis=1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=1)
    dup_sorted = np.zeros_like(p, dtype=bool)
    dup_sorted[:, 1:] = (sorted_p[:, 1:] == sorted_p[:, :-1]) & (sorted_p[:, 1:] >= 0)
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return dup


def retrieve(world: World, q: np.ndarray, at_us: np.ndarray, kinds: np.ndarray, rng: np.random.Generator,
             fresh_boost: float) -> np.ndarray:
    """[R, S] distinct available products for rows of queries q [R] at times at_us [R]; -1 where none."""
    n_slots = kinds.shape[1]
    qq = np.repeat(q[:, None], n_slots, axis=1)
    tt = np.repeat(at_us[:, None], n_slots, axis=1)
    start, end = pool_bounds(world, qq, kinds, rng)
    p = draw_products(world, start, end, tt, rng, fresh_boost)
    for _ in range(5):  # redraw duplicates within a row a few times; what still collides is dropped
        dup = duplicate_mask(p)
        if not dup.any():
            break
        p[dup] = draw_products(world, start[dup], end[dup], tt[dup], rng, fresh_boost)
    p[duplicate_mask(p)] = -1
    return p


# ----------------------------------------------------------------------------------------------------------------
# one day of traffic


def simulate_day(world: World, day: int, first_request: int, first_impression: int) -> tuple[pa.Table, pa.Table]:
    """Impressions and their hidden truth for one day; ids continue from the given offsets."""
    cfg = world.cfg
    rng = rng_for(cfg, "day", day)
    n_req, n_slots = cfg.requests_per_day, cfg.slots_per_request
    day_start = cfg.start_us + day * DAY_US
    ts = day_start + np.sort(rng.integers(0, DAY_US, size=n_req))
    user = rng.choice(cfg.n_users, size=n_req, p=world.u_weight)
    query = rng.choice(len(world.q_text), size=n_req, p=world.q_weight)
    device = np.where(rng.random(n_req) < 0.9, world.u_device[user], rng.integers(len(DEVICES), size=n_req))

    kinds = rng.choice(3, size=(n_req, n_slots), p=list(cfg.slot_mix))
    prod = retrieve(world, query, ts, kinds, rng, cfg.fresh_boost)
    valid = prod >= 0
    p = np.maximum(prod, 0)  # [R, S]; masked by `valid` below
    qq = np.repeat(query[:, None], n_slots, axis=1)
    label = true_labels(world, qq, p)

    # The incumbent ranker orders candidates by a noisy view of relevance and appeal: positions 1..k.
    incumbent = label + 0.5 * world.p_appeal[p] + rng.normal(0, 1.0, p.shape)
    incumbent[~valid] = -np.inf
    order = np.argsort(-incumbent, axis=1, kind="stable")
    prod, p, label, valid = (np.take_along_axis(x, order, axis=1) for x in (prod, p, label, valid))
    position = np.cumsum(valid, axis=1)

    uu = np.repeat(user[:, None], n_slots, axis=1)
    semantic = np.einsum("rd,rsd->rs", world.q_vec[query], world.type_vec[world.p_type[p]])
    affinity = np.einsum("rd,rsd->rs", world.u_taste[user], world.type_vec[world.p_type[p]])
    discount = np.where(rng.random(p.shape) < 0.3, rng.integers(1, 9, size=p.shape) * 0.05, 0.0)
    distance = np.linalg.norm(world.u_xy[uu] - world.store_xy[world.p_store[p]], axis=-1) + rng.exponential(0.5, p.shape)
    price = world.p_price[p]
    log_price_ratio = np.log(price / world.type_price[world.p_type[p]])
    attract = (
        cfg.click_bias
        + np.asarray(cfg.click_label_effect)[label]
        + cfg.click_semantic_effect * semantic
        + cfg.click_affinity_effect * affinity
        + cfg.click_appeal_effect * world.p_appeal[p]
        + cfg.click_query_effect * world.q_effect[qq]
        + cfg.click_price_effect * log_price_ratio
        + cfg.click_discount_effect * discount
        + cfg.click_rating_effect * (world.p_rating[p] - 4.0)
        + cfg.click_distance_effect * distance
        + DEVICE_EFFECT[device][:, None]
    )
    examination = np.maximum(position, 1).astype(np.float64) ** -cfg.position_decay
    click_prob = (examination / (1.0 + np.exp(-attract))).astype(np.float32)
    click = rng.random(p.shape) < click_prob
    conv_logit = cfg.conversion_bias + 0.8 * (label == 2) + 0.8 * affinity - 0.5 * log_price_ratio + 1.5 * discount
    conversion = click & (rng.random(p.shape) < 1.0 / (1.0 + np.exp(-conv_logit)))

    rows = valid.ravel()
    pv = p.ravel()[rows]
    n = int(rows.sum())
    request_id = np.repeat(np.arange(first_request, first_request + n_req, dtype=np.int64), n_slots)[rows]
    impression_id = np.arange(first_impression, first_impression + n, dtype=np.int64)
    flat = lambda x: x.ravel()[rows]  # noqa: E731  (row-major: request by request, position by position)
    impressions = pa.table({
        "impression_id": impression_id,
        "request_id": request_id,
        "ts": pa.array(np.repeat(ts, n_slots)[rows], pa.timestamp("us", tz="UTC")),
        "user_id": np.repeat(user, n_slots)[rows].astype(np.int64) + 1,
        "query_id": np.repeat(query, n_slots)[rows].astype(np.int64) + 1,
        "product_id": product_ids(pv),
        "ad_id": product_ids(pv) + 10_000_000,
        "campaign_id": campaign_ids(world, pv),
        "advertiser_id": world.p_brand[pv].astype(np.int64) + 1,
        "position": flat(position).astype(np.int8),
        "device": pa.array(np.array(DEVICES)[np.repeat(device, n_slots)[rows]]),
        "price": price.ravel()[rows].astype(np.float32),
        "discount": flat(discount).astype(np.float32),
        "rating": world.p_rating[pv].astype(np.float32),
        "rating_count": world.p_rating_count[pv].astype(np.int32),
        "store_distance_km": np.round(flat(distance), 2).astype(np.float32),
        "click": flat(click).astype(np.int8),
        "conversion": flat(conversion).astype(np.int8),
    })
    truth = pa.table({
        "impression_id": impression_id,
        "click_prob": flat(click_prob),
        "true_label": flat(label).astype(np.int8),
    })
    return impressions, truth


# ----------------------------------------------------------------------------------------------------------------
# purchases and relevance labels


def simulate_purchases(world: World) -> pa.Table:
    """Purchases from history_days before the start to the end; types follow each user's taste."""
    cfg, rng = world.cfg, rng_for(world.cfg, "purchases")
    buyers = np.flatnonzero(world.u_has_history)
    counts = rng.poisson(cfg.purchases_per_user, size=buyers.size)
    user = np.repeat(buyers, counts)
    lo, hi = cfg.start_us - cfg.history_days * DAY_US, cfg.start_us + cfg.n_days * DAY_US
    ts = lo + (rng.random(user.size) * (hi - lo)).astype(np.int64)
    types = np.empty(user.size, dtype=np.int64)
    chunk = max(1, 2_000_000 // len(world.type_names))
    for s in range(0, user.size, chunk):  # [chunk, T] probabilities at a time keeps memory flat
        u = user[s : s + chunk]
        logits = cfg.taste_sharpness * world.u_taste[u] @ world.type_vec.T
        prob = np.exp(logits - logits.max(1, keepdims=True))
        cdf = np.cumsum(prob, axis=1)
        r = rng.random(u.size)[:, None] * cdf[:, -1:]
        types[s : s + chunk] = np.minimum((cdf < r).sum(1), len(world.type_names) - 1)
    start, end = world.type_range[types, 0], world.type_range[types, 1]
    product = draw_products(world, start, end, ts, rng, fresh_boost=0.0)
    keep = product >= 0
    user, ts, product = user[keep], ts[keep], product[keep]
    order = np.lexsort((product, ts, user))
    user, ts, product = user[order], ts[order], product[order]
    distinct = np.r_[True, (user[1:] != user[:-1]) | (ts[1:] != ts[:-1]) | (product[1:] != product[:-1])]
    user, ts, product = user[distinct], ts[distinct], product[distinct]
    return pa.table({
        "user_id": user.astype(np.int64) + 1,
        "product_id": product_ids(product),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "quantity": (1 + rng.poisson(0.4, size=user.size)).astype(np.int32),
    })


def simulate_relevance(world: World) -> tuple[pa.Table, pa.Table]:
    """The "LLM-curated" relevance set: a uniform sample of queries, up to relevance_per_label products of each
    true label per query, among products that exist at the end of the training window; each label passes
    through the labeller's confusion (a wrong label with probability label_noise)."""
    cfg, rng = world.cfg, rng_for(world.cfg, "relevance")
    n_q = min(cfg.relevance_queries, len(world.q_text))
    q = np.sort(rng.choice(len(world.q_text), size=n_q, replace=False))
    k = cfg.relevance_per_label
    n_cand = 12 * k  # enough candidates that most queries fill every label
    kinds = rng.choice(3, size=(n_q, n_cand), p=[0.5, 0.3, 0.2])
    labelled_at = np.full(n_q, world.cfg.split_bounds_us()["train"][1] - 1)
    cand = retrieve(world, q, labelled_at, kinds, rng, fresh_boost=0.0)
    valid = cand >= 0
    label = true_labels(world, np.repeat(q[:, None], n_cand, axis=1), np.maximum(cand, 0))
    keep = np.zeros_like(valid)
    for lab in (0, 1, 2):
        m = valid & (label == lab)
        keep |= m & (np.cumsum(m, axis=1) <= k)
    qi = np.repeat(q[:, None], n_cand, axis=1)[keep]
    pi = cand[keep]
    true = label[keep]
    wrong = rng.random(true.size) < cfg.label_noise
    noisy = np.where(wrong, (true + 1 + rng.integers(2, size=true.size)) % 3, true).astype(np.int8)
    order = np.lexsort((pi, qi))
    qid, pid = qi[order].astype(np.int64) + 1, product_ids(pi[order])
    relevance = pa.table({"query_id": qid, "product_id": pid, "label": noisy[order],
                          "source": pa.array(["llm"] * len(qid))})
    truth = pa.table({"query_id": qid, "product_id": pid, "true_label": true[order].astype(np.int8)})
    return relevance, truth


def retrieval_truth(world: World, query_ids: np.ndarray) -> pa.Table:
    """Every catalog product's true relevance (1 or 2; 0 left out) to each of `query_ids`: the retrieval judgments
    that embedding evaluation ranks the whole catalog against."""
    q_index = np.unique(query_ids) - 1
    products = np.arange(world.n_products)
    qid, pid, label = [], [], []
    for start in range(0, len(q_index), 256):  # [256, P] labels at a time
        q = q_index[start:start + 256]
        labels = true_labels(world, np.repeat(q[:, None], len(products), axis=1), np.tile(products, (len(q), 1)))
        rows, cols = np.nonzero(labels)
        qid.append(q[rows] + 1)
        pid.append(product_ids(cols))
        label.append(labels[rows, cols])
    return pa.table({"query_id": np.concatenate(qid).astype(np.int64), "product_id": np.concatenate(pid),
                     "true_label": np.concatenate(label).astype(np.int8)})


# ----------------------------------------------------------------------------------------------------------------
# summary, accumulated day by day so the bench world never needs all impressions in memory


@dataclass
class Summary:
    world: World
    rows: dict[str, int] = field(default_factory=dict)
    clicks: dict[str, int] = field(default_factory=dict)
    conversions: dict[str, int] = field(default_factory=dict)
    impressions: dict[str, int] = field(default_factory=dict)
    train_requests_per_query: np.ndarray = None
    test_query: list = field(default_factory=list)
    test_new_product: int = 0
    test_y: list = field(default_factory=list)
    test_p: list = field(default_factory=list)
    position_clicks: np.ndarray = None
    position_count: np.ndarray = None

    def __post_init__(self) -> None:
        n_q, s = len(self.world.q_text), self.world.cfg.slots_per_request
        self.train_requests_per_query = np.zeros(n_q, dtype=np.int64)
        self.position_clicks = np.zeros(s + 1, dtype=np.int64)
        self.position_count = np.zeros(s + 1, dtype=np.int64)

    def add_day(self, split: str, imp: pa.Table, truth: pa.Table) -> None:
        click = imp["click"].to_numpy()
        self.impressions[split] = self.impressions.get(split, 0) + len(click)
        self.clicks[split] = self.clicks.get(split, 0) + int(click.sum())
        self.conversions[split] = self.conversions.get(split, 0) + int(imp["conversion"].to_numpy().sum())
        pos = imp["position"].to_numpy().astype(np.int64)
        self.position_clicks += np.bincount(pos, weights=click, minlength=len(self.position_clicks)).astype(np.int64)
        self.position_count += np.bincount(pos, minlength=len(self.position_count))
        q = imp["query_id"].to_numpy() - 1
        if split == "train":
            first = np.r_[True, np.diff(imp["request_id"].to_numpy()) != 0]
            self.train_requests_per_query += np.bincount(q[first], minlength=len(self.train_requests_per_query))
        if split == "test":
            train_end = self.world.cfg.split_bounds_us()["train"][1]
            created = self.world.p_created_us[imp["product_id"].to_numpy() - 1]
            self.test_new_product += int((created >= train_end).sum())
            self.test_query.append(q)
            self.test_y.append(click)
            self.test_p.append(truth["click_prob"].to_numpy())

    def finish(self, relevance: pa.Table, relevance_truth: pa.Table) -> dict:
        cfg = self.world.cfg
        total = sum(self.impressions.values())
        test_q = np.concatenate(self.test_query)
        weight = np.sort(self.world.q_weight)[::-1]
        top = max(1, len(weight) // 100)
        label = relevance["label"].to_numpy()
        true = relevance_truth["true_label"].to_numpy()
        return {
            "impressions": total,
            "ctr": sum(self.clicks.values()) / total,
            "ctr_by_split": {s: self.clicks[s] / self.impressions[s] for s in self.impressions},
            "conversion_rate_per_click": sum(self.conversions.values()) / max(1, sum(self.clicks.values())),
            "ctr_by_position": (self.position_clicks[1:] / np.maximum(self.position_count[1:], 1)).round(4).tolist(),
            "oracle_auc_test": auc(np.concatenate(self.test_y), np.concatenate(self.test_p)),
            "top1pct_query_traffic_share": float(weight[:top].sum()),
            "test_share_tail_queries": float((self.train_requests_per_query[test_q] < 5).mean()),
            "test_share_new_products": self.test_new_product / self.impressions["test"],
            "relevance_label_mix": {str(k): float((label == k).mean()) for k in (0, 1, 2)},
            "relevance_noise_rate": float((label != true).mean()),
            "relevance_noise_configured": cfg.label_noise,
            "products_ambiguous_title": float((self.world.p_ambiguity == 1).mean()),
            "products_ambiguous_image": float((self.world.p_ambiguity == 2).mean()),
            "users_with_history": float(self.world.u_has_history.mean()),
        }


# ----------------------------------------------------------------------------------------------------------------
# tables of the static world


def products_table(world: World, pngs: list[bytes]) -> pa.Table:
    n = world.n_products
    return pa.table({
        "product_id": product_ids(np.arange(n)),
        "title": pa.array(world.p_title),
        "aisle": pa.array([world.aisle_names[a] for a in world.p_aisle]),
        "brand": pa.array([world.brand_names[b] for b in world.p_brand]),
        "store_id": world.p_store.astype(np.int64) + 1,
        "price": world.p_price.astype(np.float32),
        "image": pa.array(pngs, pa.binary()),
        "created_ts": pa.array(world.p_created_us, pa.timestamp("us", tz="UTC")),
    })


def truth_tables(world: World) -> dict[str, pa.Table]:
    n = world.n_products
    return {
        "product_truth": pa.table({
            "product_id": product_ids(np.arange(n)),
            "type_id": world.p_type.astype(np.int32),
            "type_name": pa.array([world.type_names[t] for t in world.p_type]),
            "aisle_id": world.p_aisle.astype(np.int32),
            "ambiguity": pa.array(np.array(["none", "title", "image"])[world.p_ambiguity]),
        }),
        "query_truth": pa.table({
            "query_id": np.arange(1, len(world.q_text) + 1, dtype=np.int64),
            "intent": pa.array(np.array(INTENTS)[world.q_intent]),
            "target": pa.array(world.q_target),
            "weight": world.q_weight,
            "level": world.q_level,
        }),
    }


# ----------------------------------------------------------------------------------------------------------------
# the whole world, written atomically


def simulate(cfg: WorldConfig, out: Path, overwrite: bool = False, progress: bool = True) -> dict:
    """Generate the world into `out` (complete or not at all) and return its world.json content."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file, not a world folder; --overwrite replaces world folders only")
    if file := next((p for p in out.parents if p.exists() and not p.is_dir()), None):
        raise NotADirectoryError(f"{out}: {file} is a file, not a folder")
    with staged_folder(out) as tmp:
        meta = _write_world(cfg, tmp, progress)
        (tmp / "world.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def _write_world(cfg: WorldConfig, root: Path, progress: bool) -> dict:
    raw, hidden = root / "raw", root / "hidden"
    world = build_world(cfg)
    rows: dict[str, int] = {}

    pngs = product_images(world, progress=progress)
    products = products_table(world, pngs)
    for part, s in enumerate(range(0, world.n_products, PRODUCTS_PER_PART)):
        write_table("products", products.slice(s, PRODUCTS_PER_PART), raw / "products", part=part)
    rows["products"] = products.num_rows
    del products, pngs
    queries = pa.table({"query_id": np.arange(1, len(world.q_text) + 1, dtype=np.int64),
                        "query_text": pa.array(world.q_text)})
    write_table("queries", queries, raw / "queries")
    rows["queries"] = queries.num_rows
    for name, table in truth_tables(world).items():
        write_table(name, table, hidden / name)
        rows[name] = table.num_rows
    relevance, relevance_truth = simulate_relevance(world)
    write_table("relevance", relevance, raw / "relevance")
    write_table("relevance_truth", relevance_truth, hidden / "relevance_truth")
    rows["relevance"] = rows["relevance_truth"] = relevance.num_rows
    judgments = retrieval_truth(world, relevance.column("query_id").to_numpy())
    write_table("retrieval_truth", judgments, hidden / "retrieval_truth")
    rows["retrieval_truth"] = judgments.num_rows
    purchases = simulate_purchases(world)
    write_table("purchases", purchases, raw / "purchases")
    rows["purchases"] = purchases.num_rows

    summary = Summary(world)
    bounds = cfg.split_bounds_us()
    next_request = next_impression = 1
    for day in tqdm(range(cfg.n_days), desc="traffic", unit="day", disable=not progress):
        imp, truth = simulate_day(world, day, next_request, next_impression)
        write_table("impressions", imp, raw / "impressions", part=day)
        write_table("impression_truth", truth, hidden / "impression_truth", part=day)
        day_start = cfg.start_us + day * DAY_US
        split = next(s for s, (lo, hi) in bounds.items() if lo <= day_start < hi)
        summary.add_day(split, imp, truth)
        next_request += cfg.requests_per_day
        next_impression += imp.num_rows
    rows["impressions"] = rows["impression_truth"] = next_impression - 1

    iso = lambda us: np.datetime_as_string(np.datetime64(us, "us"), unit="s") + "Z"  # noqa: E731
    return {
        "name": cfg.name,
        "generator": "experiments.simulate/1",
        "config": config_to_dict(cfg),
        "splits": {s: [iso(lo), iso(hi)] for s, (lo, hi) in bounds.items()},
        "rows": rows,
        "aisles": list(world.aisle_names),
        "summary": summary.finish(relevance, relevance_truth),
    }


def format_summary(meta: dict) -> str:
    s = meta["summary"]
    lines = [f"world '{meta['name']}': " + ", ".join(f"{k} {v:,}" for k, v in meta["rows"].items() if k in RAW_TABLES)]
    lines.append("splits: " + ", ".join(f"{k} {a[:10]}..{b[:10]}" for k, (a, b) in meta["splits"].items()))
    lines.append(f"CTR {s['ctr']:.4f} (" + ", ".join(f"{k} {v:.4f}" for k, v in s["ctr_by_split"].items())
                 + f"); conversions per click {s['conversion_rate_per_click']:.3f}")
    lines.append("CTR by position: " + " ".join(f"{v:.3f}" for v in s["ctr_by_position"]))
    lines.append(f"oracle AUC (test, true click probability as score): {s['oracle_auc_test']:.4f}")
    lines.append(f"top 1% of queries carry {s['top1pct_query_traffic_share']:.1%} of traffic; "
                 f"{s['test_share_tail_queries']:.1%} of test impressions come from queries seen < 5 times in train")
    lines.append(f"{s['test_share_new_products']:.1%} of test impressions show products created after the train window")
    mix = s["relevance_label_mix"]
    lines.append(f"relevance labels 0/1/2: {mix['0']:.1%} / {mix['1']:.1%} / {mix['2']:.1%}; label noise "
                 f"{s['relevance_noise_rate']:.3f} (configured {s['relevance_noise_configured']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.simulate", description=__doc__.split("\n")[0])
    add_config_args(parser)
    parser.add_argument("--out", type=Path, help="output folder (default: data/<name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing world folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    cfg = config_from_args(WorldConfig, args)
    out = args.out or Path("data") / cfg.name
    started = time.perf_counter()
    meta = simulate(cfg, out, overwrite=args.overwrite, progress=not args.no_progress)
    print(format_summary(meta))
    print(f"written to {out} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    exit_on(main, ConfigError, FileExistsError, NotADirectoryError)
