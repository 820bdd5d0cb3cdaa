"""experiments.world: the world's definitions (latent space, true relevance, config checks), and the promises the
demo world keeps (docs/design.md); each test fails if its property is missing.

The promises are measured from the written tables (read through the schema package), not from the simulator's
internals.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from core.config import ConfigError, load_config
from experiments.images import decode_png
from experiments.world import WorldConfig, build_space, build_world, true_labels
from feature_store.schema import read_table
from tests.conftest import WORLD_CONFIGS


def _read_frame(world, table, columns=None, hidden=False):
    return read_table(table, world / ("hidden" if hidden else "raw") / table, columns=columns).to_pandas()


# ---------------------------------------------------------------------------------------------------------------
# The definitions


def test_related_aisles_are_close_and_pet_care_stands_apart():
    world = build_space(load_config(WorldConfig))
    vec = dict(zip(world.aisle_names, world.aisle_vec))
    cos = lambda a, b: float(vec[a] @ vec[b])  # noqa: E731
    assert cos("beverages", "alcohol") > cos("beverages", "household") + 0.3
    assert cos("coffee and tea", "alcohol") > cos("coffee and tea", "baby") + 0.3
    assert max(cos("pet care", a) for a in world.aisle_names if a != "pet care") < cos("beverages", "alcohol")


def test_true_labels_follow_the_definition():
    world = build_world(load_config(WorldConfig, WORLD_CONFIGS / "tiny.yaml"))
    q = world.q_text.index("apples")  # a head query of intent "type"
    apples = world.type_names.index("apples")
    same_type = np.flatnonzero(world.p_type == apples)
    same_aisle_other_type = np.flatnonzero((world.p_aisle == world.type_aisle[apples]) & (world.p_type != apples))
    other_dept = np.flatnonzero(world.p_aisle == world.aisle_names.index("pet care"))
    for products, expected in ((same_type, 2), (same_aisle_other_type, 1), (other_dept, 0)):
        labels = true_labels(world, np.full(len(products), q), products)
        assert (labels == expected).all()


def test_bench_config_reaches_ten_million_impressions():
    cfg = load_config(WorldConfig, WORLD_CONFIGS / "bench.yaml")
    # retrieval drops under 1% of slots (duplicates, products not yet created): keep a margin
    assert cfg.n_days * cfg.requests_per_day * cfg.slots_per_request * 0.97 >= 10_000_000


def test_fresh_boost_must_leave_fresh_products_a_chance():
    with pytest.raises(ConfigError, match="fresh_boost"):
        WorldConfig(fresh_boost=-1.0).validate()


def test_config_checks_name_the_key():
    with pytest.raises(ConfigError, match="'start_date' must be YYYY-MM-DD, got '2026-13-01'"):
        WorldConfig(start_date="2026-13-01").validate()
    with pytest.raises(ConfigError, match="invalid value for 'slot_mix'"):
        WorldConfig(slot_mix=(0.5, 0.5, 0.5)).validate()


@pytest.mark.parametrize("key, value", [("n_users", 0), ("n_stores", 0), ("requests_per_day", -1), ("latent_dim", 0),
                                        ("relevance_queries", 60_000), ("history_days", 0), ("attribute_rate", 1.5)])
def test_sizes_out_of_range_are_named_before_any_work(key, value):
    # Each of these used to reach numpy ("negative dimensions are not allowed") or an empty world.
    with pytest.raises(ConfigError, match=f"invalid value for '{key}'"):
        WorldConfig(**{key: value}).validate()


def test_splits_follow_each_other_day_by_day():
    cfg = WorldConfig(start_date="2026-01-05", train_days=2, valid_days=1, test_days=3)
    day = 86_400 * 1_000_000
    start = 1_767_571_200 * 1_000_000  # 2026-01-05T00:00:00Z
    assert cfg.start_us == start and cfg.n_days == 6
    assert cfg.split_bounds_us() == {"train": (start, start + 2 * day), "valid": (start + 2 * day, start + 3 * day),
                                     "test": (start + 3 * day, start + 6 * day)}


# ---------------------------------------------------------------------------------------------------------------
# The promises of the demo world


@pytest.fixture(scope="module")
def demo(demo_world):
    meta = json.loads((demo_world / "world.json").read_text())
    imp = _read_frame(demo_world, "impressions",
                      ["ts", "request_id", "user_id", "query_id", "product_id", "position", "click"])
    truth = _read_frame(demo_world, "impression_truth", hidden=True)
    imp = imp.merge(truth, on="impression_id", validate="one_to_one")
    bounds = {k: (pd.Timestamp(a), pd.Timestamp(b)) for k, (a, b) in meta["splits"].items()}
    imp["split"] = np.select([imp.ts < bounds["train"][1], imp.ts < bounds["valid"][1]], ["train", "valid"], "test")
    return meta, imp, bounds


def test_base_ctr_between_1_and_10_percent(demo):
    _, imp, _ = demo
    assert 0.01 <= imp.click.mean() <= 0.10


def test_oracle_auc_between_070_and_090(demo):
    _, imp, _ = demo
    test = imp[imp.split == "test"]
    oracle = roc_auc_score(test.click, test.click_prob)
    assert 0.70 <= oracle <= 0.90
    # The oracle is the physical limit: the true probability is calibrated.
    assert test.click_prob.sum() / test.click.sum() == pytest.approx(1.0, abs=0.05)


def test_queries_follow_a_long_tail(demo):
    _, imp, _ = demo
    requests = imp.drop_duplicates("request_id")
    per_query = requests.query_id.value_counts()
    top = per_query.iloc[: max(1, len(per_query) // 100)]
    assert top.sum() / len(requests) >= 0.30  # the head: top 1% of queries carry >= 30% of traffic
    train_counts = requests[requests.split == "train"].query_id.value_counts()
    test = imp[imp.split == "test"]
    seen = test.query_id.map(train_counts).fillna(0)
    assert (seen < 5).mean() >= 0.30  # the tail: >= 30% of test impressions from queries seen < 5 times


def test_test_week_shows_new_products(demo_world, demo):
    _, imp, bounds = demo
    products = _read_frame(demo_world, "products", ["created_ts"])
    created = imp.product_id.map(products.set_index("product_id").created_ts)
    test = imp.split == "test"
    assert (created[test] >= bounds["train"][1]).mean() >= 0.10
    assert (created <= imp.ts).all()  # nobody sees a product before it exists


def test_clicks_follow_relevance_position_and_history(demo_world, demo):
    _, imp, _ = demo
    ctr = imp.groupby("true_label").click.mean()
    assert ctr[0] < ctr[1] < ctr[2] and ctr[2] > 3 * ctr[0]
    # Position bias at fixed relevance: position 1 is clicked far more than position 4.
    rel2 = imp[imp.true_label == 2].groupby("position").click.mean()
    assert rel2[1] > 1.5 * rel2[4]
    # Purchase-history affinity: at fixed relevance, products from aisles the user bought from get more clicks.
    purchases = _read_frame(demo_world, "purchases", ["user_id", "product_id"])
    aisle = _read_frame(demo_world, "products", ["aisle"]).set_index("product_id").aisle
    bought = set(zip(purchases.user_id, purchases.product_id.map(aisle)))
    rel = imp[imp.true_label == 2]
    mask = np.fromiter((k in bought for k in zip(rel.user_id, rel.product_id.map(aisle))), bool, len(rel))
    assert rel.click[mask].mean() > 1.3 * rel.click[~mask].mean()


def test_multimodal_beats_title_only_and_image_only_on_aisle(demo_world):
    products = _read_frame(demo_world, "products", ["title", "aisle", "image"])
    pixels = np.stack([decode_png(b) for b in products.image]) / 255.0  # [P, 32, 32, 3]
    n, h, w, c = pixels.shape
    pixels = pixels.reshape(n, h // 2, 2, w // 2, 2, c).mean((2, 4)).reshape(n, -1)  # 2x2 blocks: a faster fit
    words = CountVectorizer(binary=True).fit_transform(products.title).toarray()
    y = products.aisle.to_numpy()
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.3, random_state=0, stratify=y)

    def accuracy(x):
        clf = LogisticRegression(max_iter=200, C=0.5).fit(x[idx_train], y[idx_train])
        return clf.score(x[idx_test], y[idx_test])

    title_only, image_only = accuracy(words), accuracy(pixels)
    both = accuracy(np.hstack([words, pixels]))
    assert both >= title_only + 0.05 and both >= image_only + 0.05, (title_only, image_only, both)
    assert both >= 0.85


def test_relevance_label_noise_matches_configured_rate(demo_world, demo):
    meta, _, _ = demo
    rel = _read_frame(demo_world, "relevance").merge(_read_frame(demo_world, "relevance_truth", hidden=True),
                                              on=["query_id", "product_id"], validate="one_to_one")
    rate, n = meta["config"]["label_noise"], len(rel)
    observed = (rel.label != rel.true_label).mean()
    assert abs(observed - rate) <= 4 * np.sqrt(rate * (1 - rate) / n)
    assert set(rel.label.unique()) == {0, 1, 2}
    assert rel.true_label.value_counts(normalize=True).min() > 0.15  # every class well represented
