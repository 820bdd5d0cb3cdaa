"""benchmarks.esci_bench: the ESCI judgments as the project's tables, the metrics by hand, the learning curve's
nested query subsets, the run cache and its key, the paired-difference table, the off-the-shelf encoder against the
reference on one whole fold, and the benchmark end to end on a short run (2 folds x 1 seed x a few steps; then again
from the cache). Skipped when the shared data folder has no esci_opensearch_150q (except the skip path itself and the
pure functions, which run on tiny hand-made frames)."""

from __future__ import annotations

import dataclasses
import json
import zlib

import numpy as np
import pandas as pd
import pytest

import benchmarks.common
from benchmarks import esci_bench
from embeddings.config import EmbeddingConfig
from feature_store.schema import read_table
from tests.conftest import SHARED_DATA

ESCI = SHARED_DATA / "esci_opensearch_150q"
needs_data = pytest.mark.skipif(not (ESCI / esci_bench.JUDGMENTS_FILE).is_file(),
                                reason=f"{ESCI} (the ESCI 150-query sample) is not present")


def test_main_skips_without_data(tmp_path, capsys):
    assert esci_bench.main(["--data-root", str(tmp_path / "absent")]) == 0
    assert "skipped" in capsys.readouterr().out


def test_scores_by_hand():
    pairs = pd.DataFrame({"query_id": [1, 1, 1, 2, 2], "product_id": [10, 11, 12, 13, 14],
                          "esci": ["E", "S", "I", "I", "E"]})
    pairs["gain"] = pairs.esci.map(esci_bench.GAIN)
    cos = np.array([0.2, 0.9, 0.1, 0.8, 0.3])
    out = esci_bench.score(pairs, cos)
    # AUC E vs I pooled: E {0.2, 0.3} vs I {0.1, 0.8}: 2 of 4 pairs ordered right
    assert out["auc"] == pytest.approx(0.5)
    ndcg1 = (0.1 + 1.0 / np.log2(3)) / (1.0 + 0.1 / np.log2(3))
    ndcg2 = (1.0 / np.log2(3)) / 1.0
    assert out["ndcg10"] == pytest.approx((ndcg1 + ndcg2) / 2)
    assert out["recall10"] == 1.0 and (out["queries"], out["pairs"]) == (2, 5)
    mean, lo, hi = esci_bench.interval([0.01, 0.03, 0.02])
    assert mean == pytest.approx(0.02) and lo < 0.02 < hi
    assert esci_bench.fold_of("t towels kitchen") in range(5)


def _queries(n: int) -> pd.DataFrame:
    texts = [f"query number {i}" for i in range(n)]
    return pd.DataFrame({"query_id": np.arange(1, n + 1), "query_text": texts,
                         "fold": [esci_bench.fold_of(t) for t in texts]})


def test_training_query_subsets_are_nested_deterministic_and_outside_the_fold():
    queries = _queries(200)
    for fold in range(esci_bench.N_FOLDS):
        every = esci_bench.training_queries(queries, fold)
        assert set(every) == set(queries.query_id[queries.fold != fold])
        q30, q60 = esci_bench.training_queries(queries, fold, 30), esci_bench.training_queries(queries, fold, 60)
        assert len(q30) == 30 and len(q60) == 60 and set(q30) < set(q60) < set(every)
        assert np.array_equal(q30, esci_bench.training_queries(queries.sample(frac=1.0, random_state=fold), fold, 30))
        assert np.array_equal(esci_bench.training_queries(queries, fold, 10_000), every)  # n >= all: all of them
    # the order is its own hash of the text, not the fold's: the first 30 are not simply the lowest fold hashes
    train = queries[queries.fold != 0]
    first = set(esci_bench.training_queries(queries, 0, 30))
    by_fold_hash = set(train.assign(h=[zlib.crc32(t.encode()) for t in train.query_text]).nsmallest(30, "h").query_id)
    assert first != by_fold_hash


def test_the_cache_key_follows_the_config_but_not_seed_or_checkpoints():
    cfg = EmbeddingConfig()
    key = esci_bench.key_hash(esci_bench.stage2_key(cfg))
    assert key == esci_bench.key_hash(esci_bench.stage2_key(dataclasses.replace(cfg, seed=7, checkpoints="/x")))
    changed = [dataclasses.replace(cfg, max_steps=3), dataclasses.replace(cfg, weight_decay=0.5),
               dataclasses.replace(cfg, stage2=dataclasses.replace(cfg.stage2, lr=cfg.stage2.lr * 2)),
               dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, max_query_len=20))]
    hashes = {esci_bench.key_hash(esci_bench.stage2_key(c)) for c in changed}
    assert key not in hashes and len(hashes) == len(changed)
    assert key != esci_bench.key_hash(esci_bench.stage2_key(cfg, max_queries=12))
    st = esci_bench.key_hash(esci_bench.st_key(0))
    assert st != esci_bench.key_hash(esci_bench.st_key(3)) != esci_bench.key_hash(esci_bench.st_key(3, 12))


def test_run_cache_round_trip_and_stale_pairs(tmp_path):
    cache = esci_bench.RunCache(tmp_path / "text")
    key = {"method": "stage2", "config": {"a": 1}}
    assert cache.get(key, "f0_s0_n30") is None
    path = cache.put(key, "f0_s0_n30", {"pairs_crc": 5, "cos": np.array([0.5, 0.25]), "best_step": np.int64(3)})
    assert path.parent.name == f"stage2-{esci_bench.key_hash(key)}" and (path.parent / "key.json").is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["f0_s0_n30.json", "key.json"]  # no temporary left
    got = cache.get(key, "f0_s0_n30", crc=5)
    assert got["cos"] == [0.5, 0.25] and got["best_step"] == 3
    assert cache.get(key, "f0_s0_n30", crc=6) is None  # other judged pairs: recomputed
    assert cache.get({"method": "stage2", "config": {"a": 2}}, "f0_s0_n30") is None


def test_paired_difference_table_by_hand():
    runs = {("stage2", 0, 0, 0): {"auc": 0.80}, ("stage2", 0, 1, 0): {"auc": 0.82},
            ("stage2", 1, 0, 0): {"auc": 0.70}, ("stage2", 1, 1, 0): {"auc": 0.74},
            ("st", 0, 0, 0): {"auc": 0.79}, ("st", 0, 1, 0): {"auc": 0.80},
            ("st", 1, 0, 0): {"auc": 0.71},  # (1, 1) missing: that pair is left out
            ("stage2", 0, 0, 30): {"auc": 0.75}}
    offshelf = {0: {"auc": 0.78}, 1: {"auc": 0.70}}
    assert esci_bench.paired_differences(runs, offshelf, "stage2", "offshelf", 0, "auc") == pytest.approx(
        [0.02, 0.04, 0.0, 0.04])
    assert esci_bench.paired_differences(runs, offshelf, "stage2", "st", 0, "auc") == pytest.approx(
        [0.01, 0.02, -0.01])
    table = esci_bench.paired_table(runs, offshelf, [0, 30], metrics=("auc",))
    mean, lo, hi, n = table[("stage2", "offshelf", 0, "auc")]
    assert (mean, n) == (pytest.approx(0.025), 4) and lo < mean < hi
    assert table[("stage2", "st", 0, "auc")][0] == pytest.approx(0.02 / 3) and table[("stage2", "st", 0, "auc")][3] == 3
    assert table[("st", "offshelf", 0, "auc")][0] == pytest.approx((0.01 + 0.02 + 0.01) / 3)
    one = table[("stage2", "offshelf", 30, "auc")]  # a single pair: a mean, no interval
    assert one[0] == pytest.approx(-0.03) and np.isnan(one[1]) and one[3] == 1
    assert ("stage2", "st", 30, "auc") not in table  # no st run at n = 30
    assert esci_bench.method_means(runs, "stage2", 0, [0, 1], [0, 1], "auc") == pytest.approx([0.81, 0.72])


def test_st_unavailable_names_the_setup_script(tmp_path):
    assert "setup_venvs.sh st" in esci_bench.st_unavailable(tmp_path / "absent" / "bin" / "python")
    python = tmp_path / "python"
    python.write_text("")
    assert esci_bench.st_unavailable(python) is None


def test_the_peer_script_never_imports_the_project():
    text = esci_bench.ST_SCRIPT.read_text()
    for package in ("benchmarks", "embeddings", "core", "feature_store", "ranking", "experiments"):
        assert f"import {package}" not in text and f"from {package}" not in text


@needs_data
def test_the_judgments_become_the_project_tables(tmp_path):
    esci = esci_bench.load_esci(ESCI)
    assert len(esci.queries) == 150 and len(esci.pairs) == 6678 and len(esci.products) == 6764
    assert esci.queries.fold.value_counts().sort_index().tolist() == [29, 47, 26, 22, 26]
    assert esci.pairs.esci.value_counts().to_dict() == {"E": 3389, "S": 1898, "I": 1086, "C": 305}
    assert "query_id" not in esci.products  # the leakage field is never read
    train_q = esci.queries.query_id[esci.queries.fold != 3].to_numpy()
    data = esci_bench.write_tables(esci, tmp_path / "fold3", train_q)
    products = read_table("products", data / "raw" / "products").to_pandas()  # validated as any catalog
    rel = read_table("relevance", data / "raw" / "relevance").to_pandas()
    assert products.columns.tolist() == ["product_id", "title", "brand"]
    assert set(products.product_id) == set(rel.product_id)  # what the training queries judged
    assert rel.columns.tolist() == ["query_id", "product_id", "label"]  # label only, no source
    assert set(rel.query_id) == set(train_q) and len(rel) == 6678 - 1011
    assert rel.label.value_counts().sort_index().tolist() == [
        int(((esci.pairs.esci.isin(["C", "I"])) & esci.pairs.query_id.isin(train_q)).sum()),
        int(((esci.pairs.esci == "S") & esci.pairs.query_id.isin(train_q)).sum()),
        int(((esci.pairs.esci == "E") & esci.pairs.query_id.isin(train_q)).sum())]


@needs_data
def test_offshelf_reproduces_the_reference_on_a_whole_fold():
    esci = esci_bench.load_esci(ESCI)
    fold = 3  # the smallest: 22 queries, 1,011 judged pairs
    pairs = esci.pairs[esci.pairs.query_id.isin(esci.queries.query_id[esci.queries.fold == fold])]
    q, p = esci_bench.offshelf_embeddings(esci, pairs)
    got = esci_bench.score(pairs, esci_bench.cosines(pairs, q, p))
    for metric in esci_bench.METRICS:
        assert got[metric] == pytest.approx(esci_bench.REFERENCE_FOLDS[fold][metric], abs=0.005), metric


@needs_data
def test_benchmark_short_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)  # not into benchmarks/results
    assert esci_bench.main(["--data-root", str(ESCI), "--folds", "0,1", "--seeds", "0", "--max-queries", "12",
                            "--max-steps", "2", "stage2.batch_size=8", "model.max_title_len=32"]) == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    metrics = {(d["metric"], d.get("fold")) for d in lines}
    for m in esci_bench.METRICS:
        for f in (0, 1):
            assert (f"offshelf_{m}", f) in metrics and (f"stage2_{m}", f) in metrics
        assert (f"diff_{m}", None) in metrics and (f"stage2_{m}_all", None) in metrics
    by_name = {d["metric"]: d for d in lines if "fold" not in d}
    assert by_name["diff_auc"]["n"] == 2 and len(by_name["diff_auc"]["ci95"]) == 2
    assert all(0.0 <= d["value"] <= 1.0 for d in lines if d["metric"].startswith(("offshelf_", "stage2_"))
               and not d["metric"].endswith("seconds_mean"))
    assert by_name["wall_seconds"]["value"] > 0 and lines[0]["config"] == "text-q12-steps2"
    recorded = [json.loads(ln) for ln in (tmp_path / "esci.jsonl").read_text().splitlines()]
    assert [d["metric"] for d in recorded] == [d["metric"] for d in lines]
    summary = (tmp_path / "esci.md").read_text()
    assert "paired difference" in summary.lower() and "| 0 |" in summary and "| 1 |" in summary
    runs = sorted((tmp_path / "esci_runs" / "text-q12-steps2").glob("stage2-*/f*_s*_n*.json"))
    assert [p.name for p in runs] == ["f0_s0_n0.json", "f1_s0_n0.json"]
    # again: every run comes from the cache, the same numbers
    assert esci_bench.main(["--data-root", str(ESCI), "--folds", "0,1", "--seeds", "0", "--max-queries", "12",
                            "--max-steps", "2", "stage2.batch_size=8", "model.max_title_len=32"]) == 0
    out = capsys.readouterr().out
    assert out.count(": cached (") == 2 and ": training" not in out
    again = {(d["metric"], d.get("fold")): d["value"] for d in map(json.loads, (ln for ln in out.splitlines()
                                                                               if ln.startswith("{")))}
    assert all(again[(d["metric"], d.get("fold"))] == d["value"] for d in lines if d["metric"] != "wall_seconds")
