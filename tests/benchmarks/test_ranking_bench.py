"""benchmarks/ranking_bench.py's step breakdown: op kinds, and a real profile of a tiny model's training step."""

from __future__ import annotations

from benchmarks.ranking_bench import _preprocessing, op_kind, step_breakdown, synthetic_data
from ranking.config import NetConfig, TrainConfig
from ranking.fit import compile_model
from ranking.models import build_model
from ranking.pipeline import make_dataset


def test_op_kinds():
    assert op_kind("_MklNativeFusedMatMul") == op_kind("_MklMatMul") == op_kind("BatchMatMulV2") == "matmul"
    for op in ("ResourceGather", "ResourceScatterSub", "ResourceScatterUpdate", "Unique", "UnsortedSegmentSum"):
        assert op_kind(op) == "gather_scatter", op
    assert op_kind("LookupTableFindV2") == "lookup"
    assert op_kind("Mul") == op_kind("BiasAddGrad") == op_kind("ConcatV2") == "other"


def test_step_breakdown_profiles_a_training_step():
    split, spec, vocabularies = synthetic_data(2_000, n_ids=4, vocab=500, n_dense=3, dim=16)
    prep = _preprocessing(split, spec, vocabularies)
    model = build_model("dashclip_two_tower", spec, prep, NetConfig(deep_layers=(32,), head_layers=(16,)))
    compile_model(model, TrainConfig(batch_size=256))
    batch = next(iter(make_dataset(split, spec, 256, shuffle=True)))
    ms = step_breakdown(model, batch, steps=3)
    assert set(ms) == {"matmul", "gather_scatter", "lookup", "other"}
    # every kind happens in this step: the dense layers, the id-table gather and row-sparse update, the
    # vocabulary lookups, and the elementwise rest
    assert all(v > 0 for v in ms.values()), ms
