"""feature_store.online (OnlineFeatures): online features equal the training-set features to the bit, unknown
entities get the training defaults, bad requests name the column, and Feast's float values and float lists are read
bit for bit (from the proto or straight from the wire bytes)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from feast.protos.feast.types.Value_pb2 import FloatList, Value

from feature_store.features import ONLINE_COLUMNS
from feature_store.online import FLOAT_HEADER, OnlineFeatures, _float_list_values, _packed, _strings, _varints
from feature_store.schema import SchemaError
from feature_store.store import FeatureRepo
from tests.feature_store.store_world import DIM, VERSION, plain_context, request_context, run


def test_online_features_equal_training_features(built, ts_frame):
    world = json.loads((built / "world.json").read_text())
    requests = []
    for split in ("train", "valid", "test"):
        start, end = (pd.Timestamp(x) for x in world["splits"][split])
        in_split = ts_frame[(ts_frame.ts >= start + 0.5 * (end - start)) & (ts_frame.ts < end)]
        requests.append(in_split.request_id.iloc[0])
    repo = None
    for i, request_id in enumerate(requests):
        rows = ts_frame[ts_frame.request_id == request_id]
        at = rows.ts.iloc[0]
        if i == 0:
            run("materialize", built, f"materialize_end={at.isoformat()}")
            repo = FeatureRepo(built, VERSION)
        else:
            repo.materialize(at.to_pydatetime())
        online = OnlineFeatures(built, VERSION)
        got = online.get(int(rows.user_id.iloc[0]), int(rows.query_id.iloc[0]), rows.product_id.tolist(),
                         request_context(rows), ad_ids=rows.ad_id.tolist())
        assert list(got) == list(ONLINE_COLUMNS)
        for name in ONLINE_COLUMNS:
            want = rows[name].to_numpy()
            if name.endswith("_embedding"):
                want = np.stack(want)
                assert got[name].dtype == np.float32 and got[name].shape == (len(rows), DIM)
                assert np.array_equal(got[name].view(np.uint32), want.view(np.uint32)), name  # to the bit
            else:
                assert np.array_equal(got[name], want), (name, got[name], want)
    # unknown entities get the training defaults, identical to the offline path for the same rows
    at = ts_frame.ts.max()
    got = online.get(10**9, 10**9, [10**9, int(ts_frame.product_id.iloc[0])], plain_context(at),
                     ad_ids=[10**9, 10**9])
    assert not got["product_embedding"][0].any() and not got["query_embedding"].any()
    assert not got["history_embedding"].any() and got["history_count"].tolist() == [0, 0]
    assert got["aisle"][0] == "" and got["store_id"][0] == 0 and got["price"][0] == 0
    offline = repo.historical(pd.DataFrame({"ts": [at, at], "user_id": [10**9] * 2, "query_id": [10**9] * 2,
                                            "product_id": [10**9, int(ts_frame.product_id.iloc[0])],
                                            "ad_id": [10**9] * 2}))
    assert offline.column("history_count").null_count == 2 and offline.column("aisle").null_count == 1


def test_bad_requests_name_the_column(built):
    online = OnlineFeatures(built, VERSION)
    ctx = plain_context(pd.Timestamp("2026-01-07", tz="UTC"))
    with pytest.raises(SchemaError, match=r"'online request'.*column 'product_id': 1 null key values"):
        online.get(1, 2, [1, None], ctx, ad_ids=[1, 2])
    with pytest.raises(SchemaError, match=r"'online request'.*column 'ts'.*no time zone"):
        online.get(1, 2, [1, 2], {**ctx, "ts": dt.datetime(2026, 1, 7)}, ad_ids=[1, 2])
    with pytest.raises(SchemaError, match=r"'online request'.*column 'ad_id'"):
        online.get(1, 2, [1, 2], ctx)


def test_float_lists_are_read_bit_for_bit():
    values = np.array([0.1, -3.5e-8, np.inf, 1e38, 0.0], np.float32)
    for n in (0, 1, 5):
        got = _float_list_values(FloatList(val=values[:n].tolist()))
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), values[:n].view(np.uint32))
    long = np.random.default_rng(0).standard_normal(300).astype(np.float32)  # a 2-byte length varint
    assert np.array_equal(_float_list_values(FloatList(val=long.tolist())), long)


def test_wire_bytes_are_read_bit_for_bit_or_refused():
    values = np.array([0.1, -3.5e-8, np.inf, 1e38, 0.0], np.float32)
    scalars = [Value(float_val=float(v)).SerializeToString() for v in values]
    got = _packed(scalars, FLOAT_HEADER, 1)
    assert got.dtype == np.float32 and got.shape == (5, 1)
    assert np.array_equal(got[:, 0].view(np.uint32), values.view(np.uint32))
    vectors = [Value(float_list_val=FloatList(val=values[::s].tolist())).SerializeToString() for s in (1, -1)]
    header = vectors[0][:-4 * len(values)]
    assert np.array_equal(_packed(vectors, header, 5).view(np.uint32), np.stack([values, values[::-1]]).view(np.uint32))
    # any other layout is left to the proto parser: another type, another vector length
    assert _packed(scalars[:1] + [Value(string_val="abc").SerializeToString()], FLOAT_HEADER, 1) is None
    assert _packed(vectors, header, 4) is None


def test_varints_and_strings_are_read_as_the_protos_read_them_or_refused():
    ints = [0, 1, 127, 128, 300, 2**31 - 1, -1, -2**31, 2**62, -2**63, 2**63 - 1, 1_700_000_000_000_000]
    int32s = [v for v in ints if -2**31 <= v < 2**31]
    for field, tag, values in (("int64_val", 0x20, ints), ("int32_val", 0x18, int32s)):
        blobs = [Value(**{field: v}).SerializeToString() for v in values]
        got = _varints(blobs, tag)
        assert got.dtype == np.int64 and got.tolist() == values, field
    words = ["", "a", "produce", "Nature's Goods", "é" * 63, "x" * 127]
    blobs = [Value(string_val=w).SerializeToString() for w in words]
    got = _strings(blobs, 0x12)
    assert got.type == pa.string() and got.to_pylist() == words
    # any other layout is left to the proto parser: another field, a longer string, a second field
    assert _varints([Value(int32_val=5).SerializeToString()], 0x20) is None
    assert _varints([Value(float_val=5.0).SerializeToString()], 0x20) is None
    assert _varints([Value(int64_val=5).SerializeToString() + b"\x20\x01"], 0x20) is None
    assert _strings([Value(string_val="x" * 128).SerializeToString()], 0x12) is None
    assert _strings([Value(string_val="ab").SerializeToString() + b"\x12\x00"], 0x12) is None
    with pytest.raises(pa.ArrowInvalid):
        _strings([b"\x12\x02\xff\xfe"], 0x12)  # not UTF-8


def test_store_columns_spread_values_and_nulls_over_the_candidates(built):
    """Decoded in one pass over the distinct entities (None or b"": no value), each candidate gets its entity's
    value or a null; equal to the protos' values for every feature type."""
    online = OnlineFeatures(built, VERSION)
    spread = np.array([2, 0, 2, 1, 3])
    cases = {"store_id": [Value(int64_val=v).SerializeToString() for v in (7, 10**15)] + [None, b""],
             "rating_count": [Value(int32_val=v).SerializeToString() for v in (3, -4)] + [None, b""],
             "brand": [Value(string_val=v).SerializeToString() for v in ("b", "")] + [None, b""],
             "price": [Value(float_val=v).SerializeToString() for v in (0.1, -2.5)] + [None, b""]}
    for name, blobs in cases.items():
        values = [online._parse(b) for b in blobs[:2]]
        field = values[0].WhichOneof("val")
        want = [getattr(values[i], field) if i < 2 else None for i in spread]
        got = online._store_column(name, blobs, spread)
        assert got.type == online._types[name] and got.to_pylist() == want, name
        full = online._store_column(name, blobs[:2], np.array([1, 0, 1]))
        assert full.null_count == 0 and full.to_pylist() == [want[3], want[1], want[3]], name
