"""feature_store.online (OnlineFeatures): online features equal the training-set features to the bit, unknown
entities get the training defaults, bad requests name the column, and Feast's float values and float lists are read
bit for bit (from the proto or straight from the wire bytes)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from feast.protos.feast.types.Value_pb2 import FloatList, Value

from feature_store.features import ONLINE_COLUMNS
from feature_store.online import FLOAT_HEADER, OnlineFeatures, _float_list_values, _packed
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
