"""The table declarations: every table's columns, arrow dtypes, keys and value rules, and the names they share.

- `TABLES` declares each table (docs/design.md, "Tables"). Key columns identify a row: they must be non-null and
  unique as a tuple. Hidden tables (`hidden=True`) hold the simulator's ground truth; no training path reads them.
- Arrow fields in `TableSchema.arrow_schema` are all nullable in arrow terms; nullability is a validation rule
  (`Column.nullable`), so tables built with `pa.table(..., schema=arrow_schema)` concatenate freely.
- `COUNT_WINDOWS_DAYS`, `COUNT_ENTITIES` and `count_feature_names` name the historical count features that the
  feature store computes and the training-set contract carries.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

TIMESTAMP = pa.timestamp("us", tz="UTC")
EMBEDDING = pa.list_(pa.float32())
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Column:
    """One column: arrow dtype, key flag and the rules its values follow.

    `allowed` is a frozenset of permitted values; `min`/`max` are inclusive bounds; `non_empty` rejects "" / b"";
    `non_blank` rejects text that is empty after stripping whitespace; `magic` is a required leading byte string
    (a file signature, e.g. PNG's). `optional`: the column may be absent from a table (a text-only catalog has no
    image column); when it is there, its values follow the rules. A reader that needs an optional column asks
    for it (`read_table(..., columns=[...])`), and its absence is then a SchemaError naming table and column.
    """

    name: str
    dtype: pa.DataType
    key: bool = False
    nullable: bool = False
    allowed: frozenset | None = None
    min: float | int | None = None
    max: float | int | None = None
    doc: str = ""
    non_empty: bool = False
    non_blank: bool = False
    magic: bytes | None = None
    optional: bool = False


@dataclass(frozen=True)
class TableSchema:
    """A table: its columns in canonical order. Hidden tables are simulator ground truth."""

    name: str
    columns: tuple[Column, ...]
    hidden: bool = False
    doc: str = ""
    one_of: tuple[str, ...] = ()  # optional columns of which a whole table must have at least one


    @property
    def keys(self) -> tuple[str, ...]:
        """Names of the key columns, in schema order."""
        return tuple(c.name for c in self.columns if c.key)

    @property
    def names(self) -> tuple[str, ...]:
        """Names of all columns, in schema order."""
        return tuple(c.name for c in self.columns)

    @property
    def required(self) -> tuple[str, ...]:
        """Names of the columns every table must have (the keys and every column not marked optional)."""
        return tuple(c.name for c in self.columns if not c.optional)

    @property
    def arrow_schema(self) -> pa.Schema:
        """The canonical arrow schema (fields in column order)."""
        return pa.schema([pa.field(c.name, c.dtype) for c in self.columns])

    def column(self, name: str) -> Column:
        """The column called `name` (KeyError naming the table's columns if there is none)."""
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table '{self.name}' has no column '{name}' (columns: {', '.join(self.names)})")


# ---------------------------------------------------------------------------------------------------------------
# The tables

LABELS = frozenset({0, 1, 2})
BINARY = frozenset({0, 1})


def _key(name: str, dtype: pa.DataType = pa.int64(), doc: str = "") -> Column:
    return Column(name, dtype, key=True, doc=doc)


def _table(name: str, *columns: Column, hidden: bool = False, doc: str = "", one_of: tuple[str, ...] = ()) -> TableSchema:
    return TableSchema(name, tuple(columns), hidden=hidden, doc=doc, one_of=one_of)


def _embeddings(name: str, key: str, doc: str) -> TableSchema:
    return _table(
        name,
        _key(key),
        Column("embedding", EMBEDDING, doc="L2-normalised embedding; every row has the same length"),
        Column("model_version", pa.string(), doc="the embedding model version that produced the row"),
        Column("event_ts", TIMESTAMP, doc="when the vector became available (point-in-time joins use it)"),
        doc=doc,
    )


# Trailing windows (days) of the historical count features; the training-set contract names them
# <entity>_<impressions|clicks>_<window>d for each entity in COUNT_ENTITIES.
COUNT_WINDOWS_DAYS = (1, 7)
COUNT_ENTITIES = ("product", "query", "ad", "user")


def count_feature_names(entity: str) -> tuple[str, ...]:
    """The count columns of one entity, e.g. product_impressions_1d, product_clicks_1d, product_impressions_7d..."""
    return tuple(f"{entity}_{kind}_{w}d" for w in COUNT_WINDOWS_DAYS for kind in ("impressions", "clicks"))


COUNT_FEATURES = tuple(name for entity in COUNT_ENTITIES for name in count_feature_names(entity))


def _feature_table(name: str, key: str, *columns: Column, doc: str) -> TableSchema:
    """A feature-store table: one row per entity and event time; Feast's point-in-time join serves, for an
    entity row at time t, the row with the latest event_ts <= t."""
    return _table(name, _key(key), _key("event_ts", TIMESTAMP, doc="when the row's values take effect"),
                  *columns, doc=doc)


def _count_table(entity: str) -> TableSchema:
    return _feature_table(
        f"{entity}_count_features", f"{entity}_id",
        *(Column(n, pa.float32(), min=0.0) for n in count_feature_names(entity)),
        doc=f"Impressions and clicks per {entity} over trailing whole UTC days: the row at day D 00:00 counts "
            f"days D-w..D-1 only (strictly before any time on day D); rows only where a value changes.")


# The impression log's ids and labels; the training set carries them unchanged (one row per impression).
IMPRESSION_KEYS = (
    _key("impression_id"),
    Column("request_id", pa.int64()),
    Column("ts", TIMESTAMP),
    Column("user_id", pa.int64()),
    Column("query_id", pa.int64()),
    Column("product_id", pa.int64()),
    Column("ad_id", pa.int64()),
    Column("campaign_id", pa.int64()),
    Column("advertiser_id", pa.int64()),
)
IMPRESSION_LABELS = (
    Column("click", pa.int8(), allowed=BINARY),
    Column("conversion", pa.int8(), allowed=BINARY),
)

TABLES: dict[str, TableSchema] = {
    t.name: t
    for t in [
        _table(
            "products",
            _key("product_id"),
            # Only product_id is required of every catalog; a model reads what its modalities use (title for
            # text, image for pictures: embeddings.data says which) and the feature store fills absent
            # attributes with its defaults (feature_store/features.py DEFAULTS; no created_ts: age 0).
            Column("title", pa.string(), non_empty=True, optional=True),
            Column("aisle", pa.string(), optional=True),
            Column("brand", pa.string(), optional=True),
            Column("store_id", pa.int64(), optional=True),
            Column("price", pa.float32(), min=0.0, optional=True),
            Column("image", pa.binary(), non_empty=True, magic=PNG_SIGNATURE, optional=True, doc="PNG file bytes"),
            Column("created_ts", TIMESTAMP, optional=True, doc="when the product entered the catalog"),
            doc="The catalog: one row per product. Every column but product_id is optional: a text-only catalog "
                "is product_id + title, an image-only one product_id + image.",
            one_of=("title", "image"),
        ),
        _table(
            "queries",
            _key("query_id"),
            Column("query_text", pa.string(), non_blank=True),
            doc="Search queries.",
        ),
        _table(
            "relevance",
            _key("query_id"),
            _key("product_id"),
            Column("label", pa.int8(), allowed=LABELS, doc="0 irrelevant, 1 moderately, 2 highly relevant"),
            Column("source", pa.string(), optional=True, doc="who labelled the pair (e.g. an LLM labeller's name)"),
            doc="Query-product relevance labels (LLM-curated).",
        ),
        _table(
            "impressions",
            *IMPRESSION_KEYS,
            Column("position", pa.int8(), min=1, doc="1 = top slot"),
            Column("device", pa.string()),
            Column("price", pa.float32(), min=0.0),
            Column("discount", pa.float32(), min=0.0, max=1.0, doc="fraction off the price"),
            Column("rating", pa.float32(), min=0.0, max=5.0),
            Column("rating_count", pa.int32(), min=0),
            Column("store_distance_km", pa.float32(), min=0.0),
            *IMPRESSION_LABELS,
            doc="The ad impression log: one row per ad shown.",
        ),
        _table(
            "purchases",
            _key("user_id"),
            _key("product_id"),
            _key("ts", TIMESTAMP),
            Column("quantity", pa.int32(), min=1),
            doc="Purchase history (for the user-history embedding).",
        ),
        _table(
            "impression_truth",
            _key("impression_id"),
            Column("click_prob", pa.float32(), min=0.0, max=1.0),
            Column("true_label", pa.int8(), allowed=LABELS),
            hidden=True,
            doc="Simulator ground truth per impression: the true click probability.",
        ),
        _table(
            "relevance_truth",
            _key("query_id"),
            _key("product_id"),
            Column("true_label", pa.int8(), allowed=LABELS),
            hidden=True,
            doc="Simulator ground truth: the relevance before label noise.",
        ),
        _table(
            "retrieval_truth",
            _key("query_id"),
            _key("product_id"),
            Column("true_label", pa.int8(), allowed=frozenset({1, 2})),
            hidden=True,
            doc="Simulator ground truth for retrieval: every catalog product relevant (1 or 2) to each query of the "
                "relevance set; pairs left out are irrelevant.",
        ),
        _table(
            "product_truth",
            _key("product_id"),
            Column("type_id", pa.int32()),
            Column("type_name", pa.string()),
            Column("aisle_id", pa.int32()),
            Column("ambiguity", pa.string(), allowed=frozenset({"none", "title", "image"})),
            hidden=True,
            doc="Simulator ground truth per product: its type and which modality is ambiguous.",
        ),
        _table(
            "query_truth",
            _key("query_id"),
            Column("intent", pa.string(), allowed=frozenset({"type", "brand_type", "aisle", "broad"})),
            Column("target", pa.string()),
            Column("weight", pa.float64(), min=0.0, doc="query frequency weight"),
            Column("level", pa.int8()),
            hidden=True,
            doc="Simulator ground truth per query: its intent and target.",
        ),
        _embeddings("product_embeddings", "product_id", "Precomputed product embeddings (one model version)."),
        _embeddings("query_embeddings", "query_id", "Precomputed query embeddings (one model version)."),
        # Feature-store tables (feature_store/derive.py writes them; Feast's feature views read them).
        _feature_table(
            "product_embedding_features", "product_id",
            Column("product_embedding", EMBEDDING),
            doc="The versioned DashCLIP product vector from the time it became available."),
        _feature_table(
            "query_embedding_features", "query_id",
            Column("query_embedding", EMBEDDING),
            doc="The versioned DashCLIP query vector from the time it became available."),
        _feature_table(
            "user_history_features", "user_id",
            Column("history_embedding", EMBEDDING, doc="mean product vector of the purchases in the window"),
            Column("history_count", pa.float32(), min=0.0, doc="purchases in the window (with a product vector)"),
            doc="Purchase-history embedding: a row at every instant the set of purchases in the trailing window "
                "changes (a purchase at p counts for times in (p, p + history_days])."),
        _feature_table(
            "product_attribute_features", "product_id",
            Column("aisle", pa.string()),
            Column("brand", pa.string()),
            Column("store_id", pa.int64()),
            Column("price", pa.float32(), min=0.0),
            Column("created_us", pa.int64(), nullable=True,
                   doc="created_ts in microseconds since the epoch (for the age); null when the catalog has no "
                       "created_ts (product_age_days is then 0)"),
            doc="Catalog attributes, effective from the product's created_ts (from the epoch when the catalog has "
                "none); attributes the catalog lacks hold the defaults of feature_store/features.py."),
        _feature_table(
            "product_rating_features", "product_id",
            Column("rating", pa.float32(), min=0.0, max=5.0),
            Column("rating_count", pa.int32(), min=0),
            doc="The rating last shown in the impression log, effective 1 microsecond after the impression "
                "that first showed it (known strictly before later impressions)."),
        *(_count_table(entity) for entity in COUNT_ENTITIES),
        _table(
            "training_set",
            *IMPRESSION_KEYS,
            Column("store_id", pa.int64(), doc="0 for an unknown product"),
            Column("position", pa.int8(), min=1, doc="1 = top slot"),
            Column("device", pa.string()),
            Column("aisle", pa.string(), doc="'' for an unknown product"),
            Column("brand", pa.string(), doc="'' for an unknown product"),
            Column("price", pa.float32(), min=0.0),
            Column("discount", pa.float32(), min=0.0, max=1.0),
            Column("rating", pa.float32(), min=0.0, max=5.0, doc="0 before the product's first impression"),
            Column("rating_count", pa.int32(), min=0),
            Column("store_distance_km", pa.float32(), min=0.0),
            Column("product_age_days", pa.float32(), min=0.0, doc="(ts - created_ts) in days; 0 if unknown"),
            *(Column(n, pa.float32(), min=0.0) for n in COUNT_FEATURES),
            Column("history_count", pa.float32(), min=0.0),
            Column("product_embedding", EMBEDDING, doc="zeros until the product's vector is available"),
            Column("query_embedding", EMBEDDING, doc="zeros until the query's vector is available"),
            Column("history_embedding", EMBEDDING, doc="zeros when no purchase is in the window"),
            *IMPRESSION_LABELS,
            doc="The pCTR training set: impressions with point-in-time features (python -m feature_store "
                "training-set); unknown entities get the defaults listed in its metadata.json."),
        _table(
            "experiment_log",
            _key("user_id", doc="the randomisation unit"),
            _key("request_id"),
            Column("arm", pa.string(), non_empty=True, doc="exactly two arms per log, e.g. control, treatment"),
            Column("ts", TIMESTAMP),
            Column("impressions", pa.int64(), min=0, doc="ads shown in the request"),
            Column("clicks", pa.int64(), min=0, doc="<= impressions"),
            Column("conversions", pa.int64(), min=0, doc="<= clicks"),
            Column("pre_clicks", pa.int64(), min=0, optional=True, doc="the user's pre-period clicks (CUPED)"),
            Column("pre_impressions", pa.int64(), min=0, optional=True, doc="the user's pre-period impressions"),
            Column("query_segment", pa.string(), optional=True, doc="head / torso / tail (pre-period requests)"),
            Column("user_history", pa.string(), optional=True, doc="returning (pre-period impressions) / new"),
            Column("new_products", pa.string(), optional=True,
                   doc="some / none: the request's candidates (retrieved before ranking, the same for both arms) "
                       "include a product created inside the experiment window"),
            doc="An online experiment's log (python -m experiments.ab_simulate, or yours): one row per (user, "
                "request); experiments.ab.log validates the cross-column rules (one arm per user, counts "
                "nested, pre-period constant per user)."),
    ]
}


# A user's own click log (Criteo, Avazu, iPinYou, ...), which `python -m ranking.prepare` turns into a training set.
# Declared beside TABLES rather than in it: it has no key column (a log may have no impression id) and its feature
# columns are whatever the user's config names (extra columns pass validation unchanged). Check one with
# `validate_against(CLICK_LOG, table, source, None, None)`. Only the label is required; each optional id enables
# what needs it: request_id GAUC per request, user_id GAUC per user, query_id + request_id the query
# head/torso/tail slices, product_id the new/old product slices, position the position slices, impression_id the
# oracle join (only when the training set's metadata records a world with ground truth).
CLICK_LOG = _table(
    "click_log",
    Column("click", pa.int8(), allowed=BINARY,
           doc="the label; ranking reads any integer, float or boolean dtype holding only 0 and 1; prepare "
               "writes int8 under this name"),
    Column("impression_id", pa.int64(), optional=True),
    Column("request_id", pa.int64(), optional=True),
    Column("user_id", pa.int64(), optional=True),
    Column("query_id", pa.int64(), optional=True),
    Column("product_id", pa.int64(), optional=True),
    Column("position", pa.int64(), optional=True, doc="1 = top slot"),
    Column("ts", TIMESTAMP, optional=True, doc="event time (a time-based split needs it, or names another column)"),
    doc="A user's click log: one row per impression, a 0/1 label, any feature columns, optional ids.",
)
