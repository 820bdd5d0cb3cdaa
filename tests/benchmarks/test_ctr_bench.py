"""benchmarks.ctr_bench: the summary table and the clean exit without the shared data (no training here)."""

from __future__ import annotations

from benchmarks import ctr_bench


def test_summary_gives_mean_and_spread_per_library_and_model():
    rows = [{"dataset": "criteo", "library": "ours", "model": "dcn", "auc": a, "logloss": 0.45}
            for a in (0.70, 0.72, 0.74)]
    rows.append({"dataset": "criteo", "library": "deepctr", "model": "dcn", "auc": 0.71, "logloss": 0.46})
    text = ctr_bench.summarise(rows, ["no virtualenv .bench-venvs/fuxictr"])
    assert "| criteo | ours | dcn | 3 | 0.7200 ± 0.0200 | 0.4500 ± 0.0000 |" in text
    assert "| criteo | deepctr | dcn | 1 | 0.7100 | 0.4600 |" in text
    assert "Not run:\n- no virtualenv .bench-venvs/fuxictr" in text


def test_a_missing_peer_is_reported_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(ctr_bench, "VENVS", tmp_path)
    assert ctr_bench.run_peer("deepctr", tmp_path, 0).startswith("no virtualenv")


def test_without_the_shared_data_it_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ctr_bench, "SHARED", tmp_path / "absent")
    assert ctr_bench.main(["--peers"]) == 0
    assert "absent; nothing to measure" in capsys.readouterr().out
