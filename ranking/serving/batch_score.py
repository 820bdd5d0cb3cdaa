"""Batch scoring of candidate tables with an exported SavedModel on Apache Beam (tfx-bsl RunInference).

    python -m ranking.serving.batch_score --model exports/dashclip_two_tower/3 \
        --input data/demo/training_sets/v1/test --output scores.parquet [--keys impression_id] [--batch-size 4096] \
        [--no-progress] [Beam options, e.g. --direct_running_mode=multi_processing --direct_num_workers=2]

The pipeline (every option this parser does not know goes to Beam; without a --runner it runs on Beam's
FnApiRunner, because Beam's DirectRunner would first try to download the Prism runner binary from GitHub):

    parquet files -> (file, row group) pieces, read from each footer on a worker and spread over the workers
      -> each row group in slices of --batch-size rows -> serialized tf.Examples (ranking.serving.tf_example, the
         model's inputs from assets.extra/model_info.json), packed into one string TensorProto per slice and keyed
         by the slice's key columns (an Arrow table)
      -> tfx_bsl RunInference on the `serve_tf_example` signature (one graph run per slice)
      -> key columns + `probability` (float32) -> one parquet file

The same command runs on several processes or machines through Beam's options alone: the FnApiRunner's
`--direct_running_mode=multi_processing --direct_num_workers=N` starts N SDK worker processes on this machine
(each loads the model once); --runner=PortableRunner / FlinkRunner / SparkRunner run it on a job service or a
cluster (docs/scaling.md gives the flags) whose workers see the model folder, the input and the output's folder
at the same paths as this process (a shared mount): this process checks the input and renames the output through
local paths, so gs:// / s3:// / hdfs:// URIs (and with them Dataflow) are not supported yet. A progress bar
counts the rows scored when the steps run in this process (the FnApiRunner in its default in_memory or
multi_threading mode); worker processes have no bar to update.

Why one RunInference element per slice: tfx-bsl writes one PredictionLog per element, with a copy of the input and
a TensorProto per signature output built in Python (tf.make_tensor_proto). One element per row made that ~10x the
cost of the model itself; one per slice makes it negligible. RunInference loads the model through
`SliceSession` (its public load_override_fn): the SavedModel's graph in a tf.compat.v1.Session, as tfx-bsl
loads it, fed each packed slice as the signature's batch of serialized tf.Examples, so the scores are the
`serve_tf_example` signature's own (equal to float32 exactness to one example per element).

The output is written into a hidden temporary folder next to `--output` and renamed onto it when the pipeline has
succeeded and wrote one score per input row, so a failed run leaves no output (and no temporary folder; an older
file at `--output` stays as it was). Rows come out in no particular order: join on the keys. `--output` must be a
local (or mounted) path: the final rename is os.replace. Everything that can be checked before the pipeline starts
is (the model folder and its model_info.json, the signature, every input column, its type and embedding width, the
key columns, an empty input, and in one pass over the keys and float inputs: NaN or infinite values (NaN in a
dense input is scored only with --nan=impute, as the model imputes it) and duplicate keys); a `BatchScoreError`
names the file, the column, the number of rows and an example key, and `main` returns 2. Probabilities that are
not finite (a diverged model) fail the run before the output is renamed into place. A problem only the data
shows (a wrong width or a null in a later row group) fails the pipeline with that error instead.

Speed: benchmarks/serving_bench.py measures this pipeline, in-process and on 2 worker processes, against direct
serving_default calls on the same parquet (beam_over_direct, beam_mp_over_direct).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

# ranking.tf_legacy_keras before tfx-bsl: tfx-bsl imports TensorFlow, which must start with tf-keras (and quietly)
from ranking.tf_legacy_keras import tf

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tfx_bsl.public.beam.run_inference import RunInference
from tfx_bsl.public.proto import model_spec_pb2

from core.files import staged_file
from feature_store.schema import checked_embedding_matrix, duplicate_keys
from ranking.serving.contract import is_uri, read_model_info, resolve_version_dir
from ranking.serving.tf_example import encode_examples, table_to_columns

SIGNATURE = "serve_tf_example"
DEFAULT_KEYS = ("impression_id", "request_id", "user_id", "query_id", "product_id", "ad_id")


class BatchScoreError(ValueError):
    """Bad model folder or input table: names the path / column and what was expected."""


@dataclass(frozen=True)
class ScoringPlan:
    """What the pipeline reads and writes, resolved and checked before it starts."""

    model_dir: Path
    inputs: dict[str, dict]  # model_info.json "inputs": {name: {dtype, shape}}
    files: list[Path]
    keys: tuple[str, ...]
    key_schema: pa.Schema  # the key columns' input types
    rows: int

    @property
    def columns(self) -> list[str]:
        """Every column the pipeline reads: keys, then model inputs not already among them."""
        return list(self.keys) + [name for name in self.inputs if name not in self.keys]

    @property
    def output_schema(self) -> pa.Schema:
        return self.key_schema.append(pa.field("probability", pa.float32()))


# ------------------------------------------------------------------------------------------------ checks


def signature_names(model_dir: Path) -> list[str]:
    """The signatures in saved_model.pb, read from the proto (no graph is loaded)."""
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((model_dir / "saved_model.pb").read_bytes())
    return sorted({name for graph in proto.meta_graphs for name in graph.signature_def})


def input_files(path: str | Path) -> list[Path]:
    """A parquet file, or the parquet files under a folder (hidden and _-prefixed files and folders skipped)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet")
                       if not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
        if not files:
            raise BatchScoreError(f"input folder {path} holds no .parquet files")
        return files
    raise BatchScoreError(f"input {path} does not exist")


def _check_type(file: Path, name: str, field: pa.Field, entry: dict) -> None:
    """The column's Arrow type can feed the declared input (ids int64 or string, dense float32, embeddings)."""
    dtype, shape, t = entry["dtype"], entry["shape"], field.type
    if len(shape) == 2:
        dim = shape[1]
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) \
                or not pa.types.is_floating(t.value_type):
            raise BatchScoreError(f"{file}: column '{name}' has type {t}, the model expects a float32 embedding "
                                  f"list of width {dim}")
        if pa.types.is_fixed_size_list(t) and t.list_size != dim:
            raise BatchScoreError(f"{file}: column '{name}' holds embeddings of width {t.list_size}, the model "
                                  f"expects width {dim}")
        return
    ok = {"int64": pa.types.is_integer(t),
          "float32": pa.types.is_integer(t) or pa.types.is_floating(t),
          "string": pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)}[dtype]
    if not ok:
        raise BatchScoreError(f"{file}: column '{name}' has type {t}, the model expects {dtype} (one value per row)")


def _check_widths(file: Path, inputs: dict[str, dict]) -> None:
    """Embedding widths in the first row group of a file (the pipeline checks every batch again)."""
    embeddings = [name for name, entry in inputs.items() if len(entry["shape"]) == 2]
    parquet = pq.ParquetFile(file)
    if not embeddings or parquet.metadata.num_row_groups == 0:
        return
    sample = parquet.read_row_group(0, columns=embeddings)
    for name in embeddings:
        checked_embedding_matrix(sample.column(name), name, inputs[name]["shape"][1], f"{file}: ", BatchScoreError)


def _read_schema(file: Path) -> pa.Schema:
    """The file's schema; a truncated or non-parquet file is a BatchScoreError naming it (pyarrow's own message
    does not name the file)."""
    try:
        return pq.read_schema(file)
    except (pa.ArrowInvalid, OSError) as err:
        raise BatchScoreError(f"{file}: not a readable parquet file ({err})") from None


def plan_scoring(model_dir: str | Path, input_path: str | Path, keys: list[str] | None = None,
                 nan_ok: bool = False) -> ScoringPlan:
    """Check the model folder and the input against each other; a BatchScoreError says what is wrong.
    nan_ok: NaN in the dense inputs the model imputes (model_info.json `nan_impute`) is scored (--nan=impute);
    otherwise refused like inf."""
    if is_uri(model_dir):  # the contract's readers take URIs; this pipeline's own file steps do not yet
        raise BatchScoreError(f"--model {model_dir}: batch scoring reads the model folder through local paths (a "
                              "gs:// / s3:// URI is not supported yet): copy it to a local or mounted folder")
    model_dir = resolve_version_dir(model_dir)
    try:
        info = read_model_info(model_dir)
    except ValueError as err:
        raise BatchScoreError(str(err)) from None
    names = signature_names(model_dir)
    if SIGNATURE not in names:
        raise BatchScoreError(f"{model_dir} has no '{SIGNATURE}' signature (it has: {', '.join(names) or 'none'}): "
                              "re-export the model with python -m ranking.serving.export")
    inputs = info["inputs"]
    files = input_files(input_path)
    schemas = {f: _read_schema(f) for f in files}
    first = schemas[files[0]]
    if keys is None:
        keys = [k for k in DEFAULT_KEYS if k in first.names]
        if not keys:
            raise BatchScoreError(f"{files[0]}: none of the default key columns ({', '.join(DEFAULT_KEYS)}) is "
                                  "present: name the key columns with --keys")
    if "probability" in keys:
        raise BatchScoreError("'probability' cannot be a key column: it is the output column")
    for file, schema in schemas.items():
        for name in keys:
            if name not in schema.names:
                raise BatchScoreError(f"{file}: key column '{name}' is missing (columns: {', '.join(schema.names)})")
        missing = [name for name in inputs if name not in schema.names]
        if missing:
            wanted = ", ".join(f"'{m}' ({inputs[m]['dtype']} {inputs[m]['shape']})" for m in missing)
            raise BatchScoreError(f"{file}: missing the model input column(s) {wanted}")
        for name, entry in inputs.items():
            _check_type(file, name, schema.field(name), entry)
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    if rows == 0:
        raise BatchScoreError(f"input {input_path} has no rows: nothing to score")
    for file in files:
        _check_widths(file, inputs)
    imputed = set(info.get("nan_impute") or {})
    if nan_ok and not imputed:
        raise BatchScoreError(f"--nan=impute: {model_dir} does not impute NaN inputs (its model_info.json records "
                              "no 'nan_impute' train means: trained with features.nan_policy=fail, or exported "
                              "before they were recorded), so its graph would turn a NaN into an arbitrary score")
    check_values(files, inputs, keys, imputed if nan_ok else set())
    key_schema = pa.schema([first.field(k) for k in keys])
    return ScoringPlan(model_dir, inputs, files, tuple(keys), key_schema, rows)


def _example_key(keys: pa.Table, mask) -> str:
    """The key columns of the first row where `mask` is true, as k=v pairs."""
    row = keys.filter(mask).slice(0, 1).to_pylist()[0]
    return ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in row.items())


def _not_finite(file: Path, name: str, values: pa.Array, keys: pa.Table, nan_ok: bool) -> None:
    """NaN or +/-inf in a float input: a model turns them into a plausible-looking score (a clipped or
    normalised NaN), so they are refused, naming the rows. nan_ok: NaN in this dense input is scored as the
    model imputes it (its train mean)."""
    flat = pc.list_flatten(values) if pa.types.is_list(values.type) or pa.types.is_large_list(values.type) \
        or pa.types.is_fixed_size_list(values.type) else values
    if not pa.types.is_floating(flat.type) or len(flat) == 0:
        return
    if np.isfinite(flat.to_numpy(zero_copy_only=False)).all():  # the usual case: one pass, no error to name
        return
    is_inf, is_nan = pc.is_inf(flat), pc.is_nan(flat)
    if flat is not values:  # per row: any component
        parents = pc.list_parent_indices(values)
        bad_rows = np.zeros(len(values), bool)
        bad_rows[parents.to_numpy()[pc.or_(is_inf, is_nan).to_numpy(zero_copy_only=False)]] = True
        kinds = [k for k, m in (("NaN", is_nan), ("infinite", is_inf)) if pc.any(m).as_py()]
        what = f"embedding rows with {' and '.join(kinds)} components"
    else:
        bad = pc.or_(is_inf, is_nan) if not nan_ok else is_inf
        bad_rows = bad.to_numpy(zero_copy_only=False)
        kinds = [k for k, m in (("NaN", is_nan), ("infinite", is_inf)) if (k != "NaN" or not nan_ok)
                 and pc.any(m).as_py()]
        what = f"{' or '.join(kinds)} values"
    if n := int(bad_rows.sum()):
        hint = ("; --nan=impute scores NaN dense values with the train mean, for a model trained with "
                "features.nan_policy=impute" if "NaN" in what and flat is values else "")
        raise BatchScoreError(f"{file}: column '{name}' has {n} rows of {len(values)} with {what} (e.g. "
                              f"{_example_key(keys, pa.array(bad_rows))}): the model needs finite values{hint}")


def check_values(files: list[Path], inputs: dict[str, dict], keys: list[str], imputed: set[str] = frozenset()
                 ) -> None:
    """Every float input finite in every row (NaN allowed in the dense inputs the model imputes) and the keys
    unique over all files: each a BatchScoreError naming the file, the column, the count and an example key.
    One pass over the keys and float inputs before the pipeline, so the error is a line, not a failed job."""
    floats = [name for name, entry in inputs.items() if entry["dtype"] == "float32"]
    seen = []
    for file in files:
        parquet = pq.ParquetFile(file)
        for group in range(parquet.metadata.num_row_groups):
            table = parquet.read_row_group(group, columns=list(dict.fromkeys([*keys, *floats])))
            key_table = table.select(keys)
            for name in floats:
                _not_finite(file, name, table.column(name).combine_chunks(), key_table, name in imputed)
            seen.append(key_table)
    found = duplicate_keys(pa.concat_tables(seen, promote_options="permissive"), keys)
    if found is not None:
        extra, dup = found
        example = ", ".join(f"{k}={dup[k]!r}" for k in keys)
        raise BatchScoreError(f"input {files[0].parent if len(files) > 1 else files[0]}: the key column(s) "
                              f"{', '.join(keys)} hold {extra} duplicate rows (e.g. {example} appears "
                              f"{dup['count_all']} times): each row needs a unique key to join its score back "
                              f"(name unique columns with --keys)")


# ------------------------------------------------------------------------------------------------ pipeline steps


def row_groups(path: str) -> list[tuple[str, int]]:
    """(file, row group) for every row group of a parquet file: the unit of work the runner spreads over its
    workers. Read from the file's footer on a worker, so the job graph holds only the file names."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return [(path, i) for i in range(pq.ParquetFile(f).metadata.num_row_groups)]


def pack_examples(examples: list[bytes]) -> bytes:
    """A slice's serialized tf.Examples as one serialized string TensorProto [n]: exactly the `examples` input a
    TF Serving PredictRequest carries for the `serve_tf_example` signature, and one RunInference element.

    The bytes protobuf would write, joined here: dtype and shape (fields 1 and 2, from the proto), then per
    example its string_val entry (field 8: a tag byte, the length as a varint, the bytes). Copying a slice's
    examples into the proto's repeated field and serializing it copied every example twice, ~10% of a batch
    scoring run."""
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(examples))])
    head = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape).SerializeToString()
    entries = map(_string_val_head, map(len, examples))
    return b"".join([head, *itertools.chain.from_iterable(zip(entries, examples))])


@functools.lru_cache(maxsize=4096)
def _string_val_head(length: int) -> bytes:
    """A TensorProto string_val entry's tag (field 8, length-delimited) and its varint length."""
    out = bytearray(b"\x42")
    while length >= 0x80:
        out.append(length & 0x7F | 0x80)
        length >>= 7
    out.append(length)
    return bytes(out)


def unpack_examples(packed: bytes) -> list[bytes]:
    return list(tensor_pb2.TensorProto.FromString(packed).string_val)


def read_slices(piece: tuple[str, int], plan: ScoringPlan, batch_size: int):
    """One row group -> (key columns of a slice, its packed tf.Examples) per batch_size rows. A null or a wrong
    embedding width fails here with a BatchScoreError naming the column."""
    path, index = piece
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        table = pq.ParquetFile(f).read_row_group(index, columns=plan.columns)
    for start in range(0, table.num_rows, batch_size):
        part = table.slice(start, batch_size)
        columns = table_to_columns(part, plan.inputs, BatchScoreError)
        yield part.select(list(plan.keys)), pack_examples(encode_examples(columns, plan.inputs))


class SliceSession:
    """The exported SavedModel as tfx-bsl loads it (its `serve` graph in a tf.compat.v1.Session), fed packed
    slices. tfx-bsl writes one PredictionLog per inference element, with a TensorProto per output built in
    Python: one per row costs ~10x the model itself (benchmarks/serving_bench.py), one per slice is negligible.
    The graph run is the signature's own: tf.io.parse_example of the slice's examples, the model, its
    `probability` and `logit` for every row."""

    def __init__(self, model_path: str, tags: list[str]):
        """tfx-bsl's load_override_fn signature: called once per worker process (RunInference shares the model
        between the threads of a process)."""
        self._session = tf.compat.v1.Session(graph=tf.compat.v1.Graph())
        tf.compat.v1.saved_model.loader.load(self._session, tags, model_path)

    def run(self, fetches: dict[str, str], feed_dict: dict[str, list[bytes]]) -> dict[str, np.ndarray]:
        """tf.compat.v1.Session.run for tfx-bsl, which feeds the elements Beam batched together (k packed
        slices): each slice is one graph run (one --batch-size batch), and each output comes back as an object
        array [k] of the slices' value arrays, so element i's PredictionLog holds all of slice i's values."""
        (name, packed), = feed_dict.items()
        out = {alias: np.empty(len(packed), dtype=object) for alias in fetches}
        for i, piece in enumerate(packed):
            for alias, value in self._session.run(fetches, feed_dict={name: unpack_examples(piece)}).items():
                out[alias][i] = value
        return out


def scored_table(keys: pa.Table, log) -> pa.Table:
    """Key columns + probability for one slice, from its PredictionLog."""
    values = tf.make_ndarray(log.predict_log.response.outputs["probability"]).reshape(-1)
    if len(values) != keys.num_rows:
        raise RuntimeError(f"RunInference returned {len(values)} predictions for {keys.num_rows} examples")
    return keys.append_column("probability", pa.array(values.astype(np.float32, copy=False), pa.float32()))


def inference_spec(model_dir: Path):
    """InferenceSpecType: the SavedModel's `serve_tf_example` signature. (No batch_parameters: tfx-bsl's
    wrapper does not hand them to Beam's BatchElements; SliceSession runs each packed slice on its own.)"""
    return model_spec_pb2.InferenceSpecType(
        saved_model_spec=model_spec_pb2.SavedModelSpec(model_path=str(model_dir.absolute()),
                                                       signature_name=[SIGNATURE]))


def pipeline_options(beam_args: list[str]):
    """Beam's PipelineOptions from the user's Beam arguments, with FnApiRunner when they name no runner."""
    has_runner = any(a == "--runner" or a.startswith("--runner=") for a in beam_args)
    return PipelineOptions(list(beam_args) if has_runner else ["--runner=FnApiRunner", *beam_args])


def runs_in_this_process(options: PipelineOptions) -> bool:
    """Whether the pipeline's steps run in this Python process: FnApiRunner in its in_memory or multi_threading
    mode (not multi_processing, which starts SDK worker processes, nor any other runner)."""
    return (options.view_as(StandardOptions).runner == "FnApiRunner"
            and options.view_as(DirectOptions).direct_running_mode != "multi_processing")


# Progress bars of the pipelines running in this process, by pipeline: a worker process finds none.
_PROGRESS: dict[str, tqdm] = {}


def count_rows(scored: pa.Table, pipeline: str) -> pa.Table:
    """A pass-through step: advance `pipeline`'s progress bar by the batch's rows when it runs in this process."""
    bar = _PROGRESS.get(pipeline)
    if bar is not None:
        bar.update(scored.num_rows)
    return scored


def run_pipeline(plan: ScoringPlan, output: str | Path, batch_size: int, beam_args: list[str],
                 progress: bool = False) -> Path:
    """Run the Beam pipeline and rename its single output file onto `output`; nothing is left on failure.
    progress: a bar of the rows scored on stderr (only where the steps run in this process)."""
    output = Path(output).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    options = pipeline_options(beam_args)
    _PROGRESS[str(tmp)] = tqdm(total=plan.rows, desc="batch score", unit="row", unit_scale=True,
                               disable=not (progress and runs_in_this_process(options)))
    try:
        with beam.Pipeline(options=options) as pipeline:
            _ = (pipeline
                 | "Files" >> beam.Create([str(f.absolute()) for f in plan.files])  # a worker may start elsewhere
                 | "RowGroups" >> beam.FlatMap(row_groups)
                 | "Spread" >> beam.Reshuffle()
                 # The type hint tells RunInference its input is keyed (its output type follows it).
                 | "Encode" >> beam.FlatMap(read_slices, plan, batch_size).with_output_types(
                     beam.typehints.Tuple[pa.Table, bytes])
                 | "Score" >> RunInference(inference_spec(plan.model_dir), load_override_fn=SliceSession)
                 | "Probability" >> beam.MapTuple(scored_table)
                 | "Progress" >> beam.Map(count_rows, str(tmp))
                 | "Write" >> beam.io.WriteToParquetBatched(str(tmp / "scores"), schema=plan.output_schema,
                                                            file_name_suffix=".parquet", num_shards=1,
                                                            shard_name_template=""))
        written = pq.ParquetFile(tmp / "scores.parquet").metadata.num_rows
        if written != plan.rows:  # a lost or repeated bundle, or input files changed while the pipeline ran
            raise RuntimeError(f"the pipeline wrote {written} scores for {plan.rows} input rows")
        probability = pq.read_table(tmp / "scores.parquet", columns=["probability"]).column("probability")
        if n := plan.rows - int(pc.sum(pc.is_finite(probability)).as_py() or 0):
            raise BatchScoreError(f"the model {plan.model_dir} returned {n} non-finite probabilities for {plan.rows} "
                                  f"rows (its weights or its handling of NaN inputs are not finite): no output "
                                  f"written")
        with staged_file(output) as staged:  # core.files' rename, with its fault points for the kill tests
            os.replace(tmp / "scores.parquet", staged)
    finally:
        _PROGRESS.pop(str(tmp)).close()
        shutil.rmtree(tmp, ignore_errors=True)
    return output


# ------------------------------------------------------------------------------------------------ CLI


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m ranking.serving.batch_score", description=__doc__.split("\n\n")[0],
        epilog="Options not listed here go to Beam's PipelineOptions (e.g. --runner=FlinkRunner).")
    parser.add_argument("--model", required=True, help="exported version folder <export_dir>/<model>/<version>/, "
                        "or <export_dir>/<model>/ for its highest version")
    parser.add_argument("--input", required=True, help="a parquet file or a folder of parquet files")
    parser.add_argument("--output", required=True, help="the output parquet file (key columns + probability)")
    parser.add_argument("--keys", default=None,
                        help=f"comma-separated key columns copied to the output (default: those of "
                             f"{','.join(DEFAULT_KEYS)} present in the input)")
    parser.add_argument("--batch-size", type=int, default=4096, help="examples per inference call")
    parser.add_argument("--nan", choices=("refuse", "impute"), default="refuse",
                        help="NaN in a dense input: refuse the input (default), or score it as the model imputes "
                             "it (the train mean for a model trained with features.nan_policy=impute); "
                             "infinite values and NaN embedding components are always refused")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, beam_args = parse_args(argv)
    if args.batch_size < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    keys = [k.strip() for k in args.keys.split(",") if k.strip()] if args.keys else None
    try:
        plan = plan_scoring(args.model, args.input, keys, nan_ok=args.nan == "impute")
        out = run_pipeline(plan, args.output, args.batch_size, beam_args, args.progress)
    except BatchScoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"scored {plan.rows:,} rows with {plan.model_dir} -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    # The steps as functions of the importable module: Beam then pickles them by reference, not by value with
    # this __main__ module's globals (the progress bars cannot be pickled).
    from ranking.serving import batch_score

    sys.exit(batch_score.main())
