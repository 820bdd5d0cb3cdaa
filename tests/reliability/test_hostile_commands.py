"""One hostile input per entry point: through the real command line for ranking.train, embeddings.train and
feature_store (exit status 2, a single line on stderr that starts with `error:` and names the problem, no
traceback: core.config.exit_on), through main() for experiments.ab_simulate and ranking.serving.batch_score. The
readers behind them are tested in-process by the other test_hostile_* files."""

from __future__ import annotations


import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embeddings.preprocess import MAX_IMAGE_PIXELS
from tests.embeddings.helpers import CONFIG
from tests.feature_store.schema.valid_tables import valid_table
from tests.helpers.training_sets import make_training_set, rewrite_split
from tests.reliability.processes import entry_env, run
from tests.reliability.test_hostile_images_strings import bomb


def _error_line(args, env) -> str:
    """The one stderr line of a command that exits 2."""
    done = run(args, env, expect=2, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_ranking_train_names_a_repeated_impression_id(tmp_path):
    folder = make_training_set(tmp_path / "data", n_requests=60)
    rewrite_split(folder, "valid", lambda t: t.set_column(0, "impression_id", pa.array(
        [t.column(0)[1].as_py()] + t.column(0).to_pylist()[1:], pa.int64())))
    line = _error_line(["-m", "ranking.train", f"training_set={folder}", "models=[base_rate]",
                        "export_model=null", f"checkpoint_dir={tmp_path / 'ckpt'}"], entry_env(tmp_path))
    dup = pq.read_table(folder / "valid").column(0)[0].as_py()
    assert line == (f"error: split 'valid' ({folder / 'valid'}): column 'impression_id' has 1 duplicate values "
                    f"(e.g. {dup} appears 2 times)")


def test_embeddings_train_names_the_product_with_a_decompression_bomb(tmp_path, store_env):
    table = valid_table("products", 3)
    images = table.column("image").to_pylist()
    images[2] = bomb(50000, 50000)
    table = table.set_column(table.column_names.index("image"), "image", pa.array(images, pa.binary()))
    (tmp_path / "raw" / "products").mkdir(parents=True)
    pq.write_table(table, tmp_path / "raw" / "products" / "part-00000.parquet")
    line = _error_line(["-m", "embeddings.train", "--stage", "1", "--config", CONFIG, "--data", str(tmp_path),
                        "--no-progress"], store_env(tmp_path))  # a ready store: no "creating tables" lines
    assert line == (f"error: {tmp_path / 'raw' / 'products'}: product_id 3: unreadable image: the PNG declares "
                    f"50000 x 50000 pixels, over the limit of {MAX_IMAGE_PIXELS} (a decompression bomb, or a picture "
                    f"to downscale first); fix the picture, or set skip_corrupt_images=true to drop such products "
                    f"(they are counted and reported)")


def test_feature_store_names_a_config_file_that_is_not_utf8(tmp_path):
    config = tmp_path / "fs.yaml"
    config.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    line = _error_line(["-m", "feature_store", "build", "--data", str(tmp_path), "--embeddings", "v1",
                        "--config", str(config)], entry_env(tmp_path))
    assert line == f"error: {config}: not UTF-8 text (byte 0xe9 at offset 9); a config is a UTF-8 YAML file"


# In-process, the command line's main(): these two import TensorFlow (and Beam), seconds a subprocess would spend
# again; the three subprocesses above already prove the exit_on path from the shell.


def test_ab_simulate_names_an_export_whose_model_info_is_not_json(tmp_path):
    from core.config import ConfigError
    from experiments import ab_simulate

    version = tmp_path / "exports" / "m" / "1"
    (version / "assets.extra").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    (version / "assets.extra" / "model_info.json").write_text("{not json")
    (tmp_path / "world.json").write_text("{}")
    with pytest.raises(ConfigError) as err:  # ab_simulate's exit_on turns it into one error line, exit 2
        ab_simulate.main(["--control", str(version), "--treatment", str(version), "--data", str(tmp_path),
                          "mlflow=false"])
    assert str(err.value).startswith(f"--control: {version / 'assets.extra' / 'model_info.json'}: not a readable "
                                     f"JSON file (Expecting property name enclosed in double quotes")


def test_batch_score_names_an_empty_version_folder(tmp_path, capsys):
    from ranking.serving import batch_score

    (tmp_path / "m" / "1").mkdir(parents=True)
    pq.write_table(pa.table({"impression_id": [1]}), tmp_path / "in.parquet")
    assert batch_score.main(["--model", str(tmp_path / "m" / "1"), "--input", str(tmp_path / "in.parquet"),
                             "--output", str(tmp_path / "out.parquet")]) == 2
    # batch_score prints its own prefix before "error:" (it does not go through exit_on)
    assert capsys.readouterr().err == (f"error: {tmp_path / 'm' / '1'} is not a SavedModel: no "
                                       f"saved_model.pb (pass a version folder, e.g. exports/dashclip_two_tower/1)\n")
    assert not (tmp_path / "out.parquet").exists()
