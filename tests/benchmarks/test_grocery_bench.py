"""benchmarks.grocery_bench: converting the Grocery Store Dataset to the raw tables, and the whole benchmark on a
few classes. Skipped when the shared data folder has no grocery_store_dataset (except the skip path itself)."""

from __future__ import annotations

import json

import pytest

import benchmarks.common
from benchmarks import grocery_bench
from feature_store.schema import read_table
from tests.conftest import ROOT, SHARED_DATA

GROCERY = SHARED_DATA / "grocery_store_dataset"
TINY = ROOT / "experiments" / "configs" / "embeddings" / "tiny.yaml"
needs_data = pytest.mark.skipif(not (GROCERY / "dataset" / "classes.csv").is_file(),
                                reason=f"{GROCERY} (the Grocery Store Dataset sample) is not present")


def test_first_sentence():
    assert grocery_bench.first_sentence("Sweet and  juicy. Grows in Spain.") == "Sweet and juicy."
    assert grocery_bench.first_sentence("No full stop here") == "No full stop here"
    # a decimal point is not a sentence end
    assert grocery_bench.first_sentence("Costs 1.5 kr. Cheap!") == "Costs 1.5 kr."


def test_main_skips_without_data(tmp_path, capsys):
    assert grocery_bench.main(["--data-root", str(tmp_path / "absent")]) == 0
    assert "skipped" in capsys.readouterr().out


@needs_data
def test_convert_a_few_classes(tmp_path):
    tables = grocery_bench.convert(GROCERY, tmp_path, image_size=16, n_classes=5)
    classes = {c.fine: c for c in tables.classes}
    assert len(classes) == 5 and 0 in classes and 80 in classes  # evenly spaced: the first and the last class
    assert classes[0].name == "Golden-Delicious" and classes[0].coarse_name == "Apple"
    assert classes[0].title.startswith("Golden Delicious Golden Delicious has a white juicy pulp")

    train = read_table("products", tables.train_dir / "raw" / "products").to_pandas()  # validates every row
    val = read_table("products", tables.val_dir / "raw" / "products").to_pandas()
    read_table("relevance", tables.train_dir / "raw" / "relevance")
    # 8 training photos per class in the sample, plus the catalogue picture
    assert len(train) == tables.n_train == 5 * 9
    val_lines = [ln for ln in (GROCERY / "dataset" / "val.txt").read_text().splitlines()
                 if ln.strip() and int(ln.split(",")[1]) in classes]
    assert len(val) == tables.n_val == len(val_lines)
    for df in (train, val):
        for pid, title, aisle in zip(df.product_id, df.title, df.aisle):
            c = classes[tables.fine[int(pid)]]
            assert (title, aisle, tables.coarse[int(pid)]) == (c.title, c.coarse_name, c.coarse)
    assert {tables.fine[int(p)] for p in train.product_id} == set(classes)
    # the validation photos are not in the training table (ids, and the pictures themselves)
    assert not set(train.product_id) & set(val.product_id)
    assert not set(train.image) & set(val.image)
    assert len(set(val.image)) == len(val)


@needs_data
def test_benchmark_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)  # not into benchmarks/results
    assert grocery_bench.main(["--data-root", str(GROCERY), "--classes", "6", "--epochs", "1", "--image-size", "16",
                               "--config", str(TINY)]) == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    by_metric = {d["metric"]: d for d in lines}
    accuracies = [f"grocery_{level}_acc_{enc}{feat}" for level in ("coarse", "fine") for enc in ("offshelf", "stage1")
                  for feat in ("", "_image", "_titled")]
    assert set(by_metric) == set(accuracies) | {"grocery_stage1_train_examples_per_s", "grocery_wall_seconds"}
    for name in accuracies:
        assert 0.0 <= by_metric[name]["value"] <= 1.0
        assert by_metric[name]["classes"] == 6 and by_metric[name]["train_products"] == 6 * 9
        assert by_metric[name]["config"] == "tiny-grocery" and "load_avg" in by_metric[name]
        assert 0.0 < by_metric[name]["majority_acc"] < 1.0
    assert by_metric["grocery_stage1_train_examples_per_s"]["value"] > 0
    recorded = [json.loads(ln) for ln in (tmp_path / "grocery.jsonl").read_text().splitlines()]
    assert [d["metric"] for d in recorded] == [d["metric"] for d in lines]
