"""Batch jobs that turn the raw tables and the embedding tables into feature tables with event timestamps.

Every function is pure (arrow in, arrow out) and returns a table of the schema's feature-table contract:
a key, `event_ts`, features. A row takes effect at its `event_ts` and holds until the entity's next row, so
the point-in-time lookup "latest row with event_ts <= t" (Feast's offline join and its online store alike)
returns exactly the value known at t. Each table has a row at every instant its value changes, including the
rows that bring a value back to zero, so no TTL is needed.

Leakage rules (tests/feature_store/test_derive.py checks them at their boundaries, tests/feature_store/test_store.py
against mutated worlds):
- a row depends only on data from before its event_ts, so changing anything at or after time t changes no row
  with event_ts <= t;
- impressions and clicks count from the next UTC day on (whole days strictly before the impression's day);
- a purchase at time p counts for times in (p, p + history_days]: strictly after it, and for exactly
  history_days after;
- a rating shown at impression time s is known from s + 1 microsecond on (strictly before later impressions);
- an embedding is served from its event_ts (the time it became available) on.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.schema import (
    COUNT_WINDOWS_DAYS, TABLES, TIMESTAMP, count_feature_names, embedding_array, embedding_matrix, validate,
)

DAY_US = 86_400 * 1_000_000


def _epoch_us(column) -> np.ndarray:
    """int64 microseconds since the epoch of a timestamp[us, UTC] column."""
    return column.cast(pa.int64()).to_numpy()


def _timestamps(us: np.ndarray) -> pa.Array:
    """int64 microseconds since the epoch -> a timestamp[us, UTC] array."""
    return pa.array(us.astype(np.int64), pa.int64()).cast(TIMESTAMP)


# ---------------------------------------------------------------------------------------------------------------
# Embeddings and catalog attributes


def embedding_features(entity: str, embeddings: pa.Table) -> pa.Table:
    """product_embeddings / query_embeddings -> product_embedding_features / query_embedding_features."""
    key = f"{entity}_id"
    table = pa.table({key: embeddings.column(key), "event_ts": embeddings.column("event_ts"),
                      f"{entity}_embedding": embeddings.column("embedding")})
    return validate(f"{entity}_embedding_features", table.sort_by([(key, "ascending")]))


# What a catalog without the attribute column gets (the same as an unknown product: feature_store/features.py
# DEFAULTS); products are optional in every column but product_id (feature_store/schema/tables.py).
ATTRIBUTE_DEFAULTS = {"aisle": "", "brand": "", "store_id": 0, "price": 0.0}


def product_attribute_features(products: pa.Table) -> pa.Table:
    """Catalog attributes, effective from created_ts; created_us keeps the creation time for the age feature.

    A catalog without some attribute columns (a text-only catalog is product_id + title) gets that attribute's
    default for every product (ATTRIBUTE_DEFAULTS); without created_ts the rows take effect from the epoch and
    created_us is null, so product_age_days is 0."""
    n, schema = products.num_rows, TABLES["product_attribute_features"]
    has = set(products.column_names)
    columns = {"product_id": products.column("product_id")}
    if "created_ts" in has:
        columns["event_ts"] = products.column("created_ts")
    else:
        columns["event_ts"] = _timestamps(np.zeros(n, np.int64))
    for name, default in ATTRIBUTE_DEFAULTS.items():
        dtype = schema.column(name).dtype
        columns[name] = products.column(name) if name in has else pa.array([default] * n, dtype)
    columns["created_us"] = (products.column("created_ts").cast(pa.int64()) if "created_ts" in has
                             else pa.nulls(n, pa.int64()))
    return validate("product_attribute_features", pa.table(columns).sort_by([("product_id", "ascending")]))


def product_rating_features(impressions: pa.Table) -> pa.Table:
    """The rating and rating count shown with each product, from 1 microsecond after the impression that first
    showed the value (rows only where the value changes)."""
    order = pc.sort_indices(impressions, [("product_id", "ascending"), ("ts", "ascending"),
                                          ("impression_id", "ascending")])
    t = impressions.select(["product_id", "ts", "rating", "rating_count"]).take(order)
    pid, ts = t.column("product_id").to_numpy(), _epoch_us(t.column("ts"))
    rating = t.column("rating").to_numpy()
    count = t.column("rating_count").to_numpy()
    keep = np.ones(len(pid), bool)
    keep[1:] = (pid[1:] != pid[:-1]) | (rating[1:] != rating[:-1]) | (count[1:] != count[:-1])
    idx = np.flatnonzero(keep)
    # two values first shown at one instant: the later impression's row wins (one row per key and time)
    sel = _last_per_key_time(pid[idx], ts[idx], idx)
    table = pa.table({"product_id": pa.array(pid[sel]), "event_ts": _timestamps(ts[sel] + 1),
                      "rating": pa.array(rating[sel]), "rating_count": pa.array(count[sel])})
    return validate("product_rating_features", table)


def _last_per_key_time(key: np.ndarray, ts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Of rows sorted by (key, ts), the indices `idx` of the last row of each (key, ts) group."""
    if len(idx) == 0:
        return idx
    last = np.ones(len(idx), bool)
    last[:-1] = (key[1:] != key[:-1]) | (ts[1:] != ts[:-1])
    return idx[last]


# ---------------------------------------------------------------------------------------------------------------
# Historical counts


def count_features(entity: str, impressions: pa.Table, windows: tuple[int, ...] = COUNT_WINDOWS_DAYS,
                   block: int = 20_000) -> pa.Table:
    """Impressions and clicks per entity over trailing whole UTC days, known strictly before the timestamp.

    The row of day D takes effect at D 00:00 UTC and counts days D-w .. D-1 for each window w, so an impression
    at any time of day D sees only whole days before it (today's earlier clicks are not counted: the exact
    "strictly before" at day granularity). Rows are written only on days where a value changes, which includes
    the day a window empties (its values return to zero).
    """
    key = f"{entity}_id"
    names = count_feature_names(entity)
    ids = impressions.column(key).to_numpy()
    day = _epoch_us(impressions.column("ts")) // DAY_US
    click = impressions.column("click").to_numpy().astype(np.int64)
    empty = validate(f"{entity}_count_features", pa.table(
        {key: pa.array([], pa.int64()), "event_ts": pa.array([], TIMESTAMP),
         **{n: pa.array([], pa.float32()) for n in names}}))
    if len(ids) == 0:
        return empty
    d0, n_days = int(day.min()), int(day.max() - day.min()) + 1
    keys, k = np.unique(ids, return_inverse=True)
    max_w = max(windows)
    out = []
    for start in range(0, len(keys), block):  # blocks of entities bound the memory of the day grid
        rows = (k >= start) & (k < start + block)
        kb, db = k[rows] - start, day[rows] - d0
        nk = min(block, len(keys) - start)
        grid = np.zeros((2, nk, n_days), np.int64)  # [impressions|clicks, entity, day]
        np.add.at(grid[0], (kb, db), 1)
        np.add.at(grid[1], (kb, db), click[rows])
        # cum[:, :, j] = activity on days d0 .. d0+j-1; a row for day d0+j (j = 0 .. n_days+max_w) counts days
        # d0+j-w .. d0+j-1, i.e. cum[j] - cum[max(j-w, 0)], with cum constant after the last day.
        cum = np.concatenate([np.zeros((2, nk, 1), np.int64), np.cumsum(grid, axis=2)], axis=2)
        j = np.arange(n_days + max_w + 1)
        cum = cum[:, :, np.minimum(j, n_days)]
        values = np.stack([cum[c] - cum[c][:, np.maximum(j - w, 0)] for w in windows for c in (0, 1)], axis=-1)
        changed = np.any(values[:, 1:] != values[:, :-1], axis=-1)  # [nk, J-1]; day j=0 is all zeros
        ek, ej = np.nonzero(changed)
        ej = ej + 1
        out.append((keys[start + ek], (d0 + ej) * DAY_US, values[ek, ej].astype(np.float32)))
    ids_out = np.concatenate([o[0] for o in out])
    us_out = np.concatenate([o[1] for o in out])
    vals = np.concatenate([o[2] for o in out])
    table = pa.table({key: pa.array(ids_out, pa.int64()), "event_ts": _timestamps(us_out),
                      **{n: pa.array(vals[:, i]) for i, n in enumerate(names)}})
    return validate(f"{entity}_count_features", table)


# ---------------------------------------------------------------------------------------------------------------
# Purchase-history embedding


def user_history_features(purchases: pa.Table, product_embeddings: pa.Table, embedding_dim: int,
                          history_days: int = 84, keep_from_us: int | None = None) -> pa.Table:
    """Mean product vector of each user's purchases in the `history_days` before each time, as change rows.

    A purchase at time p of a product whose vector is available from e counts for times t with
    max(p, e - 1us) < t <= p + history_days (strictly after the purchase; for exactly history_days; never before
    the product's vector exists). Each user gets a row at every instant that set changes, holding the mean of the
    vectors in the set (float64 running sums per user, in time order, cast to float32) and `history_count`, the
    number of purchases in it (purchase rows, not quantities); the row after the last purchase leaves is
    the zero vector with count 0. Purchases of products without a vector are left out.

    `keep_from_us`: rows before it are dropped except each user's last one, which exactly preserves every value
    at times >= keep_from_us (pass the first impression time to keep the table small).
    """
    dim = embedding_dim
    vec_ids = product_embeddings.column("product_id").to_numpy()
    order = np.argsort(vec_ids, kind="stable")
    vec_ids = vec_ids[order]
    vectors = embedding_matrix(product_embeddings.column("embedding"), dim)[order].astype(np.float64)
    vec_from = _epoch_us(product_embeddings.column("event_ts"))[order]

    user = purchases.column("user_id").to_numpy()
    pid = purchases.column("product_id").to_numpy()
    p_us = _epoch_us(purchases.column("ts"))
    pos = np.searchsorted(vec_ids, pid)
    pos_ok = np.minimum(pos, max(len(vec_ids) - 1, 0))
    has_vec = (pos < len(vec_ids)) & (vec_ids[pos_ok] == pid) if len(vec_ids) else np.zeros(len(pid), bool)
    user, pid, p_us, pos = user[has_vec], pid[has_vec], p_us[has_vec], pos[has_vec]
    enter = np.maximum(p_us + 1, vec_from[pos])  # first instant the purchase counts
    leave = p_us + history_days * DAY_US + 1  # first instant it no longer counts
    live = enter < leave
    user, pid, p_us, pos, enter, leave = (a[live] for a in (user, pid, p_us, pos, enter, leave))

    # events: +1 at enter, -1 at leave; sorted by user, time, then a fixed order so sums are reproducible
    ev_user = np.concatenate([user, user])
    ev_time = np.concatenate([enter, leave])
    ev_sign = np.concatenate([np.ones(len(user), np.int64), -np.ones(len(user), np.int64)])
    ev_vec = np.concatenate([pos, pos])
    ev_tie = np.concatenate([p_us, p_us])
    order = np.lexsort((ev_tie, ev_vec, -ev_sign, ev_time, ev_user))
    ev_user, ev_time, ev_sign, ev_vec = ev_user[order], ev_time[order], ev_sign[order], ev_vec[order]

    n = len(ev_user)
    # the rows to write: the state after the last event of each (user, instant), minus rows before keep_from_us
    # that a later row of the same user, also before keep_from_us, supersedes
    rows = _last_per_key_time(ev_user, ev_time, np.arange(n))
    if keep_from_us is not None and len(rows):
        u, t = ev_user[rows], ev_time[rows]
        next_same_user_before = np.r_[(u[1:] == u[:-1]) & (t[1:] < keep_from_us), False]
        rows = rows[~next_same_user_before]
    slot = np.full(n, -1, np.int64)  # event index -> output row
    slot[rows] = np.arange(len(rows))
    means = np.zeros((len(rows), dim), np.float32)
    counts = np.zeros(len(rows), np.float32)
    bounds = np.flatnonzero(np.r_[True, ev_user[1:] != ev_user[:-1], True]) if n else np.array([0])
    for a, b in zip(bounds[:-1], bounds[1:]):  # per user: sums depend only on that user's earlier events
        sums = np.cumsum(vectors[ev_vec[a:b]] * ev_sign[a:b, None], axis=0)  # [events of the user, D] float64
        cnt = np.cumsum(ev_sign[a:b])
        keep = slot[a:b] >= 0
        out = slot[a:b][keep]
        means[out] = np.where(cnt[keep, None] > 0, sums[keep] / np.maximum(cnt[keep], 1)[:, None], 0.0)
        counts[out] = cnt[keep]
    table = pa.table({"user_id": pa.array(ev_user[rows], pa.int64()), "event_ts": _timestamps(ev_time[rows]),
                      "history_embedding": embedding_array(means), "history_count": pa.array(counts)})
    return validate("user_history_features", table, embedding_dim=dim)
