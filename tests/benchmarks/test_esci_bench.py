"""benchmarks.esci_bench: the ESCI judgments as the project's tables, the metrics by hand, the off-the-shelf encoder
against the reference on one whole fold, and the benchmark end to end on a short run (2 folds x 1 seed x a few
steps). Skipped when the shared data folder has no esci_opensearch_150q (except the skip path itself)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import benchmarks.common
from benchmarks import esci_bench
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
    assert "paired difference" in summary and "| 0 |" in summary and "| 1 |" in summary
