"""Batch scoring on Beam (`python -m ranking.serving.batch_score`) against direct calls of the exported
SavedModel's `serving_default` signature (the package's trained model: tests/ranking/serving/conftest.py)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
from apache_beam.runners.portability import prism_runner
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import saved_model_pb2

from ranking.serving import batch_score
from ranking.serving.batch_score import (SliceSession, count_rows, main, pack_examples, pipeline_options,
                                         plan_scoring, run_pipeline, runs_in_this_process, unpack_examples)
from ranking.serving.tf_example import encode_examples
from ranking.tf_legacy_keras import tf
from tests.conftest import ROOT
from tests.helpers.training_sets import numpy_columns

DIM = 16  # make_training_set's embedding width


def test_batch_scores_match_direct_calls_one_per_row(trained, test_table, direct, tmp_path, monkeypatch):
    # No --runner: the pipeline must not go near Prism (Beam's DirectRunner tries to download its binary first).
    prism_calls = []
    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", lambda *a, **k: prism_calls.append(a) or 1 / 0)
    # Two input files (the folder form of --input) and a batch size that leaves a partial last batch.
    half = test_table.num_rows // 2
    (tmp_path / "in").mkdir()
    pq.write_table(test_table.slice(0, half), tmp_path / "in" / "part-0.parquet")
    pq.write_table(test_table.slice(half), tmp_path / "in" / "part-1.parquet")
    out = tmp_path / "out" / "scores.parquet"
    assert main(["--model", str(trained.version), "--input", str(tmp_path / "in"), "--output", str(out),
                 "--batch-size", "700"]) == 0

    assert prism_calls == []
    scores = pq.read_table(out)
    assert scores.column_names == ["impression_id", "request_id", "user_id", "query_id", "product_id", "ad_id",
                                   "probability"]
    assert scores.num_rows == test_table.num_rows
    ids = test_table.column("impression_id").to_numpy()
    got_ids = scores.column("impression_id").to_numpy()
    assert len(np.unique(got_ids)) == len(got_ids)  # exactly one score per input row
    row = {int(i): k for k, i in enumerate(ids)}
    where = np.array([row[int(i)] for i in got_ids])  # raises KeyError for an id not in the input
    for key in ("request_id", "user_id", "query_id", "product_id", "ad_id"):
        assert np.array_equal(scores.column(key).to_numpy(), test_table.column(key).to_numpy()[where]), key
    prob = scores.column("probability").to_numpy()
    assert prob.dtype == np.float32
    assert np.abs(prob - direct[where]).max() <= 1e-6
    assert prob.std() > 0.01  # real scores, not a constant
    assert sorted(p.name for p in out.parent.iterdir()) == ["scores.parquet"]  # no temporary leftovers


def _write(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def _set_width(table: pa.Table, name: str, width: int) -> pa.Table:
    """The embedding column cut (or zero-padded) to another width."""
    values = np.array(table.column(name).to_pylist(), np.float32)
    values = values[:, :width] if width <= values.shape[1] else np.pad(values, ((0, 0), (0, width - DIM)))
    return table.set_column(table.schema.get_field_index(name), name, pa.array(list(values), pa.list_(pa.float32())))


@pytest.mark.parametrize("case, expected", [
    ("no_model", "does not exist"),
    ("no_model_info", "model_info.json"),
    ("missing_feature", "'product_embedding'"),
    ("wrong_width", "'query_embedding'"),
    ("empty", "no rows"),
    ("missing_key", "key column 'basket_id'"),
    ("nan_dense", r"in.parquet: column 'price' has 2 rows of 50 with NaN values \(e.g. impression_id=\d+, "
                  r"request_id=.*\): the model needs finite values; --nan=impute scores"),
    ("inf_dense", r"in.parquet: column 'price' has 1 rows of 50 with infinite values \(e.g. impression_id=\d+"),
    ("inf_embedding", r"in.parquet: .*column 'query_embedding' has .*infinite"),
    ("truncated", r"in.parquet: not a readable parquet file"),
    ("duplicate_ids", r"the key column\(s\) impression_id hold 1 duplicate rows \(e.g. impression_id=\d+ appears 2 "
                      r"times\)"),
])
def test_batch_score_errors_name_the_problem(case, expected, trained, test_table, tmp_path, capsys):
    model, data = trained.version, tmp_path / "in.parquet"
    sample = test_table.slice(0, 50)
    keys = []
    if case == "no_model":
        model = tmp_path / "nowhere" / "1"
    elif case == "no_model_info":
        model = tmp_path / "copy" / "1"
        shutil.copytree(trained.version, model, ignore=shutil.ignore_patterns("assets.extra"))
    elif case == "missing_feature":
        sample = sample.drop_columns(["product_embedding"])
    elif case == "wrong_width":
        sample = _set_width(sample, "query_embedding", DIM - 1)
    elif case == "empty":
        sample = sample.slice(0, 0)
    elif case == "missing_key":
        keys = ["--keys", "impression_id,basket_id"]
    elif case in ("nan_dense", "inf_dense"):  # a model turns these into plausible scores: refused
        price = sample.column("price").to_numpy().copy()
        price[[3, 7] if case == "nan_dense" else [5]] = np.nan if case == "nan_dense" else np.inf
        sample = sample.set_column(sample.schema.get_field_index("price"), "price", pa.array(price, pa.float32()))
    elif case == "inf_embedding":
        values = np.array(sample.column("query_embedding").to_pylist(), np.float32)
        values[4, 2] = -np.inf
        sample = sample.set_column(sample.schema.get_field_index("query_embedding"), "query_embedding",
                                   pa.array(list(values), pa.list_(pa.float32())))
    elif case == "duplicate_ids":
        sample = pa.concat_tables([sample, sample.slice(9, 1)])
        keys = ["--keys", "impression_id"]
    _write(sample, data)
    if case == "truncated":
        data.write_bytes(data.read_bytes()[:-100])
    out = tmp_path / "scores.parquet"
    assert main(["--model", str(model), "--input", str(data), "--output", str(out), *keys]) == 2
    err = capsys.readouterr().err
    assert re.search(expected, err) if case in ("nan_dense", "inf_dense", "inf_embedding", "duplicate_ids", "truncated") \
        else expected in err, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    if case == "wrong_width":
        assert f"width {DIM}" in err, err
    assert not out.exists()


def test_failed_pipeline_leaves_no_output(trained, test_table, tmp_path, capsys):
    """A wrong width the pre-check cannot see (second row group) fails inside the pipeline, as the one-line
    BatchScoreError (Beam re-raises the step's own error): no output file and no temporary folder are left, and
    an older output at the same path is untouched."""
    good = test_table.slice(0, 300)
    bad = _set_width(test_table.slice(300, 300), "history_embedding", DIM + 2)
    data = tmp_path / "in.parquet"
    with pq.ParquetWriter(data, good.schema) as writer:  # row group 0 fine, row group 1 too wide
        writer.write_table(good)
        writer.write_table(bad.cast(good.schema))
    assert pq.ParquetFile(data).metadata.num_row_groups == 2
    out = tmp_path / "out" / "scores.parquet"
    _write(pa.table({"old": [1]}), out)
    assert main(["--model", str(trained.version), "--input", str(data), "--output", str(out),
                 "--batch-size", "128"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: .*'history_embedding' should have width 16", err), err
    assert sorted(p.name for p in out.parent.iterdir()) == ["scores.parquet"]
    assert pq.read_table(out).column_names == ["old"]


def test_beam_runner_defaults_to_fnapi_and_a_given_runner_is_kept():
    assert pipeline_options([]).view_as(StandardOptions).runner == "FnApiRunner"
    options = pipeline_options(["--direct_num_workers=2"])
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert options.view_as(DirectOptions).direct_num_workers == 2
    assert pipeline_options(["--runner=FlinkRunner"]).view_as(StandardOptions).runner == "FlinkRunner"
    assert pipeline_options(["--runner", "PrismRunner"]).view_as(StandardOptions).runner == "PrismRunner"
    # The progress bar only where the steps run in this process.
    assert runs_in_this_process(pipeline_options([]))
    assert runs_in_this_process(pipeline_options(["--direct_running_mode=multi_threading"]))
    assert not runs_in_this_process(pipeline_options(["--direct_running_mode=multi_processing"]))
    assert not runs_in_this_process(pipeline_options(["--runner=FlinkRunner"]))


def test_progress_bar_counts_every_scored_row(trained, test_table, tmp_path, capfd):
    data = tmp_path / "in.parquet"
    pq.write_table(test_table.slice(0, 500), data)
    plan = plan_scoring(trained.version, data)
    run_pipeline(plan, tmp_path / "scores.parquet", 128, [], progress=True)
    err = capfd.readouterr().err
    assert "batch score" in err and "500/500" in err, err
    # Outside a running pipeline the counting step passes its batch through untouched.
    scored = pa.table({"impression_id": [1, 2], "probability": pa.array([0.1, 0.2], pa.float32())})
    assert count_rows(scored, "no such pipeline") is scored


def test_packed_slices_are_the_string_tensor_protobuf_writes():
    """pack_examples joins the serialized TensorProto itself: byte for byte what protobuf serializes for the
    same string tensor, for lengths whose varints take 1, 2 and 3 bytes and for an empty slice."""
    for examples in ([], [b""], [b"a", b"\x00" * 127, b"b" * 128, b"\xff" * 16384, b"c" * 300_000]):
        shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(examples))])
        want = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=examples)
        assert pack_examples(examples) == want.SerializeToString()
        assert unpack_examples(pack_examples(examples)) == examples


def test_packed_slices_score_like_unpacked_examples(trained, test_table, inputs, direct):
    """pack_examples -> unpack_examples gives back the examples byte for byte (the string tensor [n] TF Serving
    would be sent). SliceSession scores k packed slices of different sizes in one call, each slice's values in
    its own entry, bit for bit what tfx-bsl's own loader (the same graph in a Session) gives for the unpacked
    examples, and within 1e-6 of serving_default on the raw columns."""
    cols = numpy_columns(test_table.slice(0, 70), inputs)
    examples = encode_examples(cols, inputs)
    packed = pack_examples(examples)
    assert unpack_examples(packed) == examples
    assert tf.make_ndarray(tf.make_tensor_proto(examples)).tolist() == unpack_examples(packed)

    # The graph's tensor names, which tfx-bsl reads from the signature in saved_model.pb.
    proto = saved_model_pb2.SavedModel.FromString((trained.version / "saved_model.pb").read_bytes())
    signature_def = proto.meta_graphs[0].signature_def["serve_tf_example"]
    (name,) = [t.name for t in signature_def.inputs.values()]
    fetches = {"probability": signature_def.outputs["probability"].name}
    out = SliceSession(str(trained.version), ["serve"]).run(
        fetches, {name: [pack_examples(examples[:30]), pack_examples(examples[30:])]})["probability"]
    assert out.shape == (2,) and [len(v) for v in out] == [30, 40]

    plain = tf.compat.v1.Session(graph=tf.compat.v1.Graph())
    tf.compat.v1.saved_model.loader.load(plain, ["serve"], str(trained.version))
    for got, part in zip(out, (examples[:30], examples[30:])):
        assert np.array_equal(got, plain.run(fetches, {name: part})["probability"])
    assert np.abs(np.concatenate(list(out)) - direct[:70]).max() <= 1e-6


def test_wrong_row_count_leaves_no_output(trained, test_table, tmp_path):
    """The final check: a pipeline that wrote another number of scores than the plan's rows fails, no output."""
    data = tmp_path / "in.parquet"
    pq.write_table(test_table.slice(0, 200), data)
    plan = dataclasses.replace(plan_scoring(trained.version, data), rows=201)
    with pytest.raises(RuntimeError, match="wrote 200 scores for 201 input rows"):
        run_pipeline(plan, tmp_path / "out" / "scores.parquet", 64, [])
    assert list((tmp_path / "out").iterdir()) == []


def test_multi_process_run_matches_in_process(trained, test_table, direct, tmp_path, monkeypatch):
    """The unchanged command on 2 SDK worker processes (the FnApiRunner's multi_processing mode) writes the same
    rows, keys and float32 scores as the in-process run, over 2 files of 5 row groups each.
    The scoring cannot have run in this process: here SliceSession.run raises."""
    (tmp_path / "in").mkdir()
    half = test_table.num_rows // 2
    for i, part in enumerate([test_table.slice(0, half), test_table.slice(half)]):
        pq.write_table(part, tmp_path / "in" / f"part-{i}.parquet", row_group_size=-(-part.num_rows // 5))
    args = ["--model", str(trained.version), "--input", str(tmp_path / "in"), "--batch-size", "256", "--no-progress"]
    assert main([*args, "--output", str(tmp_path / "in_process.parquet")]) == 0

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setattr(batch_score.SliceSession, "run", lambda *a, **k: 1 / 0)  # workers import the real one
    assert main([*args, "--output", str(tmp_path / "workers.parquet"),
                 "--direct_running_mode=multi_processing", "--direct_num_workers=2"]) == 0

    here = pq.read_table(tmp_path / "in_process.parquet").sort_by("impression_id")
    there = pq.read_table(tmp_path / "workers.parquet").sort_by("impression_id")
    assert there.num_rows == test_table.num_rows
    assert there.equals(here)  # same rows, keys and scores, bit for bit
    ids = test_table.column("impression_id").to_numpy()
    got = there.column("probability").to_numpy()
    assert np.abs(got - direct[np.argsort(ids)]).max() <= 1e-6


def test_nan_dense_values_score_only_with_a_model_that_imputes_them(trained, test_table, tmp_path, capsys):
    """--nan=impute hands NaN dense values to the model only where its export records the train means it fills
    in. This model was trained with nan_policy=fail: its graph turns a NaN price into a finite, plausible score
    (what batch_score used to write), so even with --nan=impute the input is refused."""
    sample = test_table.slice(0, 50)
    price = sample.column("price").to_numpy().copy()
    price[[3, 7]] = np.nan
    data = _write(sample.set_column(sample.schema.get_field_index("price"), "price", pa.array(price, pa.float32())),
                  tmp_path / "in.parquet")
    out = tmp_path / "scores.parquet"
    assert main(["--model", str(trained.version), "--input", str(data), "--output", str(out), "--nan=impute",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"error: --nan=impute: .* does not impute NaN inputs .*arbitrary score\n", err)
    assert not out.exists()


def test_a_remote_model_folder_is_refused_in_one_line(tmp_path, capsys):
    """The contract's readers take gs:// URIs, the pipeline's file steps not yet: a clear error, exit 2."""
    out = tmp_path / "scores.parquet"
    assert main(["--model", "gs://bucket/exports/m/1", "--input", str(tmp_path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model gs://bucket/exports/m/1: batch scoring reads the model folder through "
                          "local paths") and err.count("\n") == 1, err
    assert not out.exists()
