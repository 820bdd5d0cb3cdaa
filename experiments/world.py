"""The static part of the simulated marketplace: latent semantic space, catalog, queries, users.

Everything here is drawn once per seed. `experiments.simulate` then plays traffic over it day by day.

The latent space (dimension `latent_dim`) is the world's hidden semantics: departments are far apart, aisles of
one department are close, types sit near their aisle. True relevance, the purchase-history affinity and the
click probability are all functions of it, so only a model that recovers it from content (titles, images,
query text) generalises to new products and tail queries.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
from tqdm import tqdm

from core.config import ConfigError, check_folder_name
from experiments import images, vocab

DAY_US = 86_400 * 1_000_000  # microseconds per day; all timestamps are int64 microseconds since the epoch (UTC)

# Stages draw from independent streams, so changing one size does not reshuffle the others.
STREAM = {"space": 1, "catalog": 2, "images": 3, "queries": 4, "users": 5, "purchases": 6, "relevance": 7, "day": 8}

INTENTS = ("type", "brand_type", "aisle", "broad")


@dataclass(frozen=True)
class WorldConfig:
    """Every knob of the simulated marketplace. YAML files under experiments/configs/world/ override these."""

    name: str = "demo"
    seed: int = 7
    latent_dim: int = 16
    # catalog
    types_per_aisle: int = 12
    n_products: int = 6000
    n_stores: int = 60
    brands_per_aisle: int = 8
    initial_product_share: float = 0.5  # the rest is created uniformly over the simulated days
    ambiguous_title_rate: float = 0.2  # generic title (house brand, no type word): only the image tells
    ambiguous_image_rate: float = 0.2  # studio shot of a plain box: only the title tells
    attribute_rate: float = 0.4
    image_size: int = 32
    image_noise: float = 0.06
    # queries
    n_queries: int = 50_000
    zipf_exponent: float = 0.9
    # LLM-curated relevance labels
    relevance_queries: int = 4000
    relevance_per_label: int = 4  # products per query and label (before noise)
    label_noise: float = 0.15  # probability that the labeller reports one of the two wrong labels
    # users and purchases
    n_users: int = 20_000
    user_activity_exponent: float = 0.7  # Zipf exponent of requests per user
    no_history_share: float = 0.3  # users who never bought anything
    purchases_per_user: float = 14.0  # mean over history_days + simulated days, for users with history
    history_days: int = 84
    taste_sharpness: float = 4.0  # how strongly purchases follow taste
    # traffic
    start_date: str = "2026-01-05"
    train_days: int = 18
    valid_days: int = 3
    test_days: int = 7
    requests_per_day: int = 4000
    slots_per_request: int = 8
    slot_mix: tuple[float, ...] = (0.55, 0.3, 0.15)  # candidates retrieved as exact / partial / random matches
    fresh_boost: float = 2.0  # new products (under 14 days old) are retrieved (1 + fresh_boost) times as often
    #                           (-1 < fresh_boost < 0: less often, as a ranker that shuns unproven items would)
    # click model: P(click) = examination(position) * sigmoid(attractiveness)
    click_bias: float = -5.0
    click_label_effect: tuple[float, ...] = (0.0, 1.2, 2.4)  # by true relevance 0 / 1 / 2
    click_semantic_effect: float = 1.0
    click_affinity_effect: float = 1.6
    click_appeal_effect: float = 1.0
    click_query_effect: float = 0.4
    click_price_effect: float = -0.6
    click_discount_effect: float = 2.0
    click_rating_effect: float = 0.5
    click_distance_effect: float = -0.06
    position_decay: float = 0.9  # examination = position ** -position_decay
    conversion_bias: float = -2.2

    @property
    def n_days(self) -> int:
        return self.train_days + self.valid_days + self.test_days

    def validate(self) -> None:
        checks = {
            "types_per_aisle": 1 <= self.types_per_aisle <= min(len(t) for t in vocab.AISLE_TYPES.values()),
            "n_products": self.n_products >= 2 * len(vocab.aisles()) * self.types_per_aisle,
            "initial_product_share": 0 < self.initial_product_share <= 1,
            "ambiguous_title_rate": 0 <= self.ambiguous_title_rate and self.ambiguous_title_rate + self.ambiguous_image_rate < 1,
            "ambiguous_image_rate": 0 <= self.ambiguous_image_rate,
            "label_noise": 0 <= self.label_noise < 2 / 3,
            "no_history_share": 0 <= self.no_history_share <= 1,
            "fresh_boost": self.fresh_boost > -1,
            "slot_mix": len(self.slot_mix) == 3 and min(self.slot_mix) >= 0 and abs(sum(self.slot_mix) - 1) < 1e-6,
            "click_label_effect": len(self.click_label_effect) == 3,
            "train_days": self.train_days >= 1,
            "test_days": self.test_days >= 1,
            "valid_days": self.valid_days >= 0,
            "image_size": self.image_size >= 16,
            "n_queries": self.n_queries >= 100,
            "slots_per_request": 1 <= self.slots_per_request <= 50,
            "latent_dim": self.latent_dim >= 1,
            "n_stores": self.n_stores >= 1,
            "brands_per_aisle": self.brands_per_aisle >= 1,
            "attribute_rate": 0 <= self.attribute_rate <= 1,
            "image_noise": self.image_noise >= 0,
            "zipf_exponent": self.zipf_exponent >= 0,
            "relevance_queries": 1 <= self.relevance_queries <= self.n_queries,
            "relevance_per_label": self.relevance_per_label >= 1,
            "n_users": self.n_users >= 1,
            "user_activity_exponent": self.user_activity_exponent >= 0,
            "purchases_per_user": self.purchases_per_user >= 0,
            "history_days": self.history_days >= 1,
            "taste_sharpness": self.taste_sharpness >= 0,
            "requests_per_day": self.requests_per_day >= 1,
            "position_decay": self.position_decay >= 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"WorldConfig: invalid value for '{key}': {getattr(self, key)!r}")
        check_folder_name("WorldConfig", "name", self.name)  # the world is written to data/<name>/
        try:
            datetime.strptime(self.start_date, "%Y-%m-%d")
        except ValueError as e:
            raise ConfigError(f"WorldConfig: 'start_date' must be YYYY-MM-DD, got {self.start_date!r}") from e

    @property
    def start_us(self) -> int:
        start = datetime.strptime(self.start_date, "%Y-%m-%d").replace(tzinfo=timezone.utc)
        return int(start.timestamp()) * 1_000_000

    def split_bounds_us(self) -> dict[str, tuple[int, int]]:
        """[start, end) of each split in microseconds: train, then valid, then test (the next week)."""
        s, d = self.start_us, DAY_US
        t1, t2 = s + self.train_days * d, s + (self.train_days + self.valid_days) * d
        return {"train": (s, t1), "valid": (t1, t2), "test": (t2, s + self.n_days * d)}


def rng_for(cfg: WorldConfig, stream: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, STREAM[stream], *extra]))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class World:
    """Arrays describing the static world; products are indexed 0..n-1 and sorted by type, so every type,
    aisle and department pool is a contiguous index range."""

    cfg: WorldConfig
    aisle_names: tuple[str, ...]
    aisle_dept: np.ndarray  # [A] department index of each aisle
    aisle_vec: np.ndarray  # [A, D] unit latent vectors
    type_names: list[str]
    type_words: list[tuple[str, ...]]
    type_aisle: np.ndarray  # [T]
    type_vec: np.ndarray  # [T, D]
    type_popularity: np.ndarray  # [T]
    type_price: np.ndarray  # [T] median price
    # products [P]
    p_type: np.ndarray = field(default=None)
    p_aisle: np.ndarray = field(default=None)
    p_brand: np.ndarray = field(default=None)  # brand index into brand_names
    p_attr: np.ndarray = field(default=None)  # attribute index, -1 for none
    p_ambiguity: np.ndarray = field(default=None)  # 0 none, 1 title, 2 image
    p_price: np.ndarray = field(default=None)
    p_rating: np.ndarray = field(default=None)
    p_rating_count: np.ndarray = field(default=None)
    p_store: np.ndarray = field(default=None)
    p_created_us: np.ndarray = field(default=None)
    p_appeal: np.ndarray = field(default=None)
    p_title: list[str] = field(default=None)
    brand_names: list[str] = field(default=None)
    brand_aisle: np.ndarray = field(default=None)  # -1 for house brands
    brand_quality: np.ndarray = field(default=None)
    store_xy: np.ndarray = field(default=None)
    # pools: ranges [start, end) into the type-sorted product index
    type_range: np.ndarray = field(default=None)  # [T, 2]
    aisle_range: np.ndarray = field(default=None)  # [A, 2]
    dept_range: np.ndarray = field(default=None)  # [n_dept, 2]
    # queries [Q]
    q_text: list[str] = field(default=None)
    q_intent: np.ndarray = field(default=None)  # index into INTENTS
    q_type: np.ndarray = field(default=None)  # target type (-1 if none)
    q_attr: np.ndarray = field(default=None)
    q_brand: np.ndarray = field(default=None)
    q_aisles: np.ndarray = field(default=None)  # [Q, A] bool: aisles that fully satisfy the query
    q_vec: np.ndarray = field(default=None)
    q_weight: np.ndarray = field(default=None)  # Zipf traffic share
    q_level: np.ndarray = field(default=None)
    q_effect: np.ndarray = field(default=None)
    q_target: list[str] = field(default=None)
    # users [U]
    u_taste: np.ndarray = field(default=None)  # [U, D]
    u_xy: np.ndarray = field(default=None)
    u_device: np.ndarray = field(default=None)
    u_weight: np.ndarray = field(default=None)
    u_has_history: np.ndarray = field(default=None)

    @property
    def n_products(self) -> int:
        return len(self.p_type)


DEVICES = ("mobile", "app", "desktop")
DEVICE_EFFECT = np.array([0.0, 0.25, -0.15])


def build_space(cfg: WorldConfig) -> World:
    """Latent vectors of departments, aisles and types."""
    rng = rng_for(cfg, "space")
    aisle_names = vocab.aisles()
    depts = list(vocab.DEPARTMENTS)
    aisle_dept = np.array([depts.index(vocab.department_of(a)) for a in aisle_names])
    dept_vec = _unit(rng.normal(size=(len(depts), cfg.latent_dim)))
    dept_vec[depts.index("pets")] *= 1.6  # pet care stands apart from everything
    aisle_vec = _unit(dept_vec[aisle_dept] + 0.55 * _unit(rng.normal(size=(len(aisle_names), cfg.latent_dim))))
    type_names, type_words, type_aisle = [], [], []
    for a, aisle in enumerate(aisle_names):
        for entry in vocab.AISLE_TYPES[aisle][: cfg.types_per_aisle]:
            words = tuple(entry.split("|"))
            type_names.append(words[0])
            type_words.append(words)
            type_aisle.append(a)
    type_aisle = np.array(type_aisle)
    type_vec = _unit(aisle_vec[type_aisle] + 0.45 * _unit(rng.normal(size=(len(type_names), cfg.latent_dim))))
    return World(
        cfg=cfg,
        aisle_names=aisle_names,
        aisle_dept=aisle_dept,
        aisle_vec=aisle_vec,
        type_names=type_names,
        type_words=type_words,
        type_aisle=type_aisle,
        type_vec=type_vec,
        type_popularity=rng.normal(0, 0.4, len(type_names)),
        type_price=np.exp(rng.normal(1.3, 0.6, len(type_names))),
    )


def _brands(cfg: WorldConfig, rng: np.random.Generator, n_aisles: int) -> tuple[list[str], np.ndarray]:
    pairs = [f"{a} {b}" for a in vocab.BRAND_FIRST for b in vocab.BRAND_SECOND]
    n = n_aisles * cfg.brands_per_aisle
    if n > len(pairs):
        raise ValueError(f"brands_per_aisle={cfg.brands_per_aisle} needs {n} brand names, have {len(pairs)}")
    names = [pairs[i] for i in rng.permutation(len(pairs))[:n]] + list(vocab.HOUSE_BRANDS)
    aisle = np.concatenate([np.repeat(np.arange(n_aisles), cfg.brands_per_aisle), np.full(len(vocab.HOUSE_BRANDS), -1)])
    return names, aisle


def _title(rng: np.random.Generator, brand: str, attr: str | None, words: tuple[str, ...] | None) -> str:
    size = vocab.SIZES[rng.integers(len(vocab.SIZES))]
    if words is None:  # generic title: nothing in it reveals the aisle
        k = rng.choice(len(vocab.GENERIC_TITLE_WORDS), size=2, replace=False)
        body = " ".join(vocab.GENERIC_TITLE_WORDS[i] for i in k)
    else:  # the canonical name half of the time, otherwise a synonym
        word = words[0] if (len(words) == 1 or rng.random() < 0.5) else words[1 + rng.integers(len(words) - 1)]
        body = f"{attr} {word}" if attr else word
    return f"{brand} {body.title()} {size}"


def build_catalog(world: World) -> None:
    """Products (sorted by type), brands, stores, titles; images are drawn separately (`product_images`)."""
    cfg, rng = world.cfg, rng_for(world.cfg, "catalog")
    n_types, n_aisles = len(world.type_names), len(world.aisle_names)
    world.brand_names, world.brand_aisle = _brands(cfg, rng, n_aisles)
    world.brand_quality = rng.normal(0, 0.5, len(world.brand_names))
    world.store_xy = rng.uniform(0, 20, size=(cfg.n_stores, 2))

    # Every type gets at least two products that exist from the start, so every pool is non-empty at day 0.
    extra = rng.choice(n_types, size=cfg.n_products - 2 * n_types, p=_softmax(world.type_popularity))
    p_type = np.sort(np.concatenate([np.arange(n_types), np.arange(n_types), extra]))
    n = len(p_type)
    first_of_type = np.r_[True, p_type[1:] != p_type[:-1]]
    second_of_type = np.r_[False, first_of_type[:-1]]
    p_aisle = world.type_aisle[p_type]
    ambiguity = rng.choice(3, size=n, p=[1 - cfg.ambiguous_title_rate - cfg.ambiguous_image_rate,
                                         cfg.ambiguous_title_rate, cfg.ambiguous_image_rate])
    n_house = len(vocab.HOUSE_BRANDS)
    own_brand = p_aisle * cfg.brands_per_aisle + rng.integers(cfg.brands_per_aisle, size=n)
    house_brand = n_aisles * cfg.brands_per_aisle + rng.integers(n_house, size=n)
    p_brand = np.where((ambiguity == 1) | (rng.random(n) < 0.1), house_brand, own_brand)
    p_attr = np.where(rng.random(n) < cfg.attribute_rate, rng.integers(len(vocab.ATTRIBUTES), size=n), -1)

    start, days = cfg.start_us, cfg.n_days
    initial = (rng.random(n) < cfg.initial_product_share) | first_of_type | second_of_type
    born_before = start - (1 + rng.random(n) * 729) * DAY_US
    born_during = start + rng.random(n) * days * DAY_US
    world.p_created_us = np.where(initial, born_before, born_during).astype(np.int64)

    world.p_type, world.p_aisle, world.p_brand, world.p_attr, world.p_ambiguity = p_type, p_aisle, p_brand, p_attr, ambiguity
    world.p_price = np.round(world.type_price[p_type] * np.exp(rng.normal(0, 0.25, n)), 2).clip(0.29, None)
    quality = world.brand_quality[p_brand]
    world.p_rating = np.round(np.clip(rng.normal(4.1 + 0.3 * quality, 0.35), 1.0, 5.0), 1)
    world.p_rating_count = np.floor(np.exp(rng.normal(3.5, 1.2, n))).astype(np.int64)
    world.p_store = rng.integers(cfg.n_stores, size=n)
    # Appeal: brand quality and type popularity (content can reveal both) plus an idiosyncratic part (only ids).
    world.p_appeal = 0.6 * quality + world.type_popularity[p_type] + rng.normal(0, 0.35, n)
    world.p_title = [
        _title(rng, world.brand_names[p_brand[i]], vocab.ATTRIBUTES[p_attr[i]] if p_attr[i] >= 0 else None,
               None if ambiguity[i] == 1 else world.type_words[p_type[i]])
        for i in range(n)
    ]
    world.type_range = _ranges(p_type, n_types)
    world.aisle_range = _ranges(p_aisle, n_aisles)
    world.dept_range = _ranges(world.aisle_dept[p_aisle], len(vocab.DEPARTMENTS))


def _ranges(sorted_keys: np.ndarray, n_keys: int) -> np.ndarray:
    starts = np.searchsorted(sorted_keys, np.arange(n_keys), side="left")
    ends = np.searchsorted(sorted_keys, np.arange(n_keys), side="right")
    return np.stack([starts, ends], axis=1)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def type_visuals(world: World) -> tuple[list[str], list[str], np.ndarray]:
    """Shape, texture and object colour of each type; unique (shape, texture) pairs within an aisle."""
    rng = rng_for(world.cfg, "images", 0)
    combos = [(s, t) for s in images.SHAPES for t in images.TEXTURES]
    shapes, textures, colours = [], [], []
    for a in range(len(world.aisle_names)):
        types = np.flatnonzero(world.type_aisle == a)
        pick = rng.permutation(len(combos))[: len(types)]
        for k in pick:
            shapes.append(combos[k][0])
            textures.append(combos[k][1])
        colours.extend(images.hsv(rng.random(), 0.75, 0.75) for _ in types)
    return shapes, textures, np.stack(colours)


def product_images(world: World, progress: bool = True) -> list[bytes]:
    """PNG bytes for every product, in product order."""
    cfg = world.cfg
    shapes, textures, colours = type_visuals(world)
    background, band = images.aisle_palette(len(world.aisle_names))
    out = []
    for i in tqdm(range(world.n_products), desc="images", unit="img", disable=not progress, mininterval=1.0):
        rng = rng_for(cfg, "images", 1, i)
        t, a = world.p_type[i], world.p_aisle[i]
        ambiguous = world.p_ambiguity[i] == 2
        pixels = images.draw_product(
            rng, cfg.image_size, shapes[t], textures[t], colours[t],
            None if ambiguous else background[a], None if ambiguous else band[a], cfg.image_noise,
        )
        out.append(images.encode_png(pixels))
    return out


def build_queries(world: World) -> None:
    """Unique query texts in three levels (head: type and aisle names; torso: synonyms and attributes; tail:
    modifiers, brands, combinations), ranked head first, with Zipf traffic weights."""
    cfg, rng = world.cfg, rng_for(world.cfg, "queries")
    n_types, n_aisles = len(world.type_names), len(world.aisle_names)
    seen: dict[str, tuple] = {}

    def add(text: str, level: int, intent: str, t: int = -1, attr: int = -1, brand: int = -1,
            aisles: tuple[int, ...] = ()) -> None:
        if text not in seen and len(seen) < cfg.n_queries:
            seen[text] = (level, intent, t, attr, brand, aisles)

    broad = [(text, tuple(world.aisle_names.index(a) for a in members)) for text, members in vocab.BROAD_INTENTS.items()]
    # level 0: the head
    for t in rng.permutation(n_types):
        add(world.type_words[t][0], 0, "type", t=int(t))
    for a in rng.permutation(n_aisles):
        add(world.aisle_names[a], 0, "aisle", aisles=(int(a),))
    for text, members in broad:
        add(text, 0, "broad", aisles=members)
    # level 1: synonyms and attribute + type
    level1 = [(w, t, -1) for t in range(n_types) for w in world.type_words[t][1:]]
    level1 += [(f"{vocab.ATTRIBUTES[k]} {world.type_words[t][0]}", t, k) for t in range(n_types) for k in range(len(vocab.ATTRIBUTES))]
    for j in rng.permutation(len(level1)):
        text, t, k = level1[j]
        add(text, 1, "type", t=t, attr=k)
    # level 2: random combinations until n_queries unique texts exist (or the space is exhausted)
    mods = vocab.QUERY_MODIFIERS
    for _ in range(cfg.n_queries * 20):
        if len(seen) >= cfg.n_queries:
            break
        kind = rng.random()
        mod = mods[rng.integers(len(mods))]
        if kind < 0.6:
            t = int(rng.integers(n_types))
            words = world.type_words[t]
            word = words[rng.integers(len(words))]
            k = int(rng.integers(len(vocab.ATTRIBUTES))) if rng.random() < 0.4 else -1
            text = f"{vocab.ATTRIBUTES[k]} {word}" if k >= 0 else word
            add(f"{text} {mod}" if rng.random() < 0.8 else f"{mod} {text}", 2, "type", t=t, attr=k)
        elif kind < 0.85:
            t = int(rng.integers(n_types))
            brands = np.flatnonzero(world.brand_aisle == world.type_aisle[t])
            b = int(brands[rng.integers(len(brands))])
            words = world.type_words[t]
            text = f"{world.brand_names[b].lower()} {words[rng.integers(len(words))]}"
            add(text if rng.random() < 0.5 else f"{text} {mod}", 2, "brand_type", t=t, brand=b)
        elif kind < 0.95:
            a = int(rng.integers(n_aisles))
            add(f"{world.aisle_names[a]} {mod}", 2, "aisle", aisles=(a,))
        else:
            text, members = broad[rng.integers(len(broad))]
            add(f"{text} {mod}", 2, "broad", aisles=members)

    if len(seen) < cfg.n_queries:
        warnings.warn(f"WorldConfig.n_queries={cfg.n_queries}: the query grammar yields only {len(seen)} distinct "
                      f"texts for types_per_aisle={cfg.types_per_aisle}; the world has {len(seen)} queries")
    texts = list(seen)  # insertion order = level order, shuffled within levels
    rows = [seen[s] for s in texts]
    nq = len(texts)
    world.q_text = texts
    world.q_level = np.array([r[0] for r in rows], dtype=np.int8)
    world.q_intent = np.array([INTENTS.index(r[1]) for r in rows], dtype=np.int8)
    world.q_type = np.array([r[2] for r in rows], dtype=np.int64)
    world.q_attr = np.array([r[3] for r in rows], dtype=np.int64)
    world.q_brand = np.array([r[4] for r in rows], dtype=np.int64)
    q_aisles = np.zeros((nq, n_aisles), dtype=bool)
    for i, r in enumerate(rows):
        if r[2] >= 0:
            q_aisles[i, world.type_aisle[r[2]]] = True
        for a in r[5]:
            q_aisles[i, a] = True
    world.q_aisles = q_aisles
    # Query vector: the target type, or the mean of the target aisles.
    vec = (q_aisles @ world.aisle_vec) / q_aisles.sum(1, keepdims=True)
    has_type = world.q_type >= 0
    vec[has_type] = world.type_vec[world.q_type[has_type]]
    world.q_vec = _unit(vec)
    ranks = np.arange(1, nq + 1, dtype=np.float64)
    weight = ranks ** -cfg.zipf_exponent
    world.q_weight = weight / weight.sum()
    world.q_effect = rng.normal(0, 1.0, nq)
    world.q_target = [
        world.type_names[r[2]] if r[2] >= 0 else "+".join(world.aisle_names[a] for a in r[5]) for r in rows
    ]


def build_users(world: World) -> None:
    """Users with a taste (a mix of two or three favourite aisles), a home location, a device, an activity."""
    cfg, rng = world.cfg, rng_for(world.cfg, "users")
    n_aisles = len(world.aisle_names)
    mix = np.zeros((cfg.n_users, n_aisles))
    n_fav = rng.integers(2, 4, size=cfg.n_users)
    for k in range(3):
        fav = rng.integers(n_aisles, size=cfg.n_users)
        mix[np.arange(cfg.n_users), fav] += np.where(k < n_fav, rng.gamma(2.0, 1.0, cfg.n_users), 0.0)
    world.u_taste = _unit(mix @ world.aisle_vec + 0.3 * rng.normal(size=(cfg.n_users, cfg.latent_dim)))
    world.u_xy = rng.uniform(0, 20, size=(cfg.n_users, 2))
    world.u_device = rng.choice(len(DEVICES), size=cfg.n_users, p=[0.5, 0.3, 0.2])
    activity = rng.permutation(cfg.n_users).astype(np.float64) + 1
    weight = activity ** -cfg.user_activity_exponent
    world.u_weight = weight / weight.sum()
    world.u_has_history = rng.random(cfg.n_users) >= cfg.no_history_share


def true_labels(world: World, q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """True relevance (int8, 2 / 1 / 0) of query indices q for product indices p (same shape)."""
    intent = world.q_intent[q]
    p_aisle, p_type = world.p_aisle[p], world.p_type[p]
    q_type = world.q_type[q]
    same_type = p_type == q_type
    in_target_aisle = world.q_aisles[q, p_aisle]
    # Partial matches: the same aisle for type queries; the same department for aisle and broad intents.
    dept_match = _dept_match(world, q, p_aisle)
    attr_ok = (world.q_attr[q] < 0) | (world.p_attr[p] == world.q_attr[q])
    brand_ok = world.p_brand[p] == world.q_brand[q]
    full = np.where(
        intent == INTENTS.index("type"), same_type & attr_ok,
        np.where(intent == INTENTS.index("brand_type"), same_type & brand_ok, in_target_aisle),
    )
    partial = np.where(intent <= INTENTS.index("brand_type"), in_target_aisle, dept_match)
    return np.where(full, 2, np.where(partial, 1, 0)).astype(np.int8)


def _dept_match(world: World, q: np.ndarray, p_aisle: np.ndarray) -> np.ndarray:
    """Whether the product's aisle shares a department with one of the query's target aisles."""
    n_dept = len(vocab.DEPARTMENTS)
    aisle_to_dept = np.eye(n_dept, dtype=bool)[world.aisle_dept]  # [A, n_dept]
    q_dept = (world.q_aisles[q].astype(np.int32) @ aisle_to_dept.astype(np.int32)) > 0  # [..., n_dept]
    return np.take_along_axis(q_dept, world.aisle_dept[p_aisle][..., None], axis=-1)[..., 0]


def build_world(cfg: WorldConfig) -> World:
    """The whole static world for a config (images are drawn later, when the products table is written)."""
    world = build_space(cfg)
    build_catalog(world)
    build_queries(world)
    build_users(world)
    return world
