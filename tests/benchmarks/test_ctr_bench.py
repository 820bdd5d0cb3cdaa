"""benchmarks.ctr_bench: the summary table, the clean exit without the shared data, the FuxiCTR runner's batches;
and (marker `peers`, run by `make bench` before the benchmark, not by `make test`) each peer's runner on a tiny
prepared fold in its own virtualenv."""

from __future__ import annotations

import pytest

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


def _fuxictr_runner():
    """benchmarks/peers/fuxictr_run.py as a module (it runs as a script inside FuxiCTR's virtualenv)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fuxictr_run", ctr_bench.ROOT / "benchmarks/peers/fuxictr_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fuxictr_batches_are_the_dicts_its_base_model_reads_each_row_once_per_epoch():
    import numpy as np
    import pandas as pd
    import torch

    frame = pd.DataFrame({"C1": np.arange(10) % 3 + 1, "I1": np.linspace(-1, 1, 10), "click": np.arange(10) % 2})
    batches = _fuxictr_runner().Batches(frame, ["C1"], ["I1"], batch_size=4, shuffle=True, seed=0)
    assert len(batches) == 3
    for _ in range(2):  # two epochs: each a new permutation of all rows
        seen = list(batches)
        assert [len(b["click"]) for b in seen] == [4, 4, 2]
        assert seen[0]["C1"].dtype == torch.int64 and seen[0]["I1"].dtype == seen[0]["click"].dtype == torch.float32
        rows = torch.cat([torch.round((b["I1"] + 1) * 4.5) for b in seen]).long()
        assert sorted(rows.tolist()) == list(range(10))
        for b in seen:  # the columns of a row stay together
            idx = torch.round((b["I1"] + 1) * 4.5).long()
            assert torch.equal(b["C1"], idx % 3 + 1) and torch.equal(b["click"], (idx % 2).float())


@pytest.mark.peers
@pytest.mark.parametrize("lib", ["deepctr", "fuxictr"])
def test_each_peer_learns_a_prepared_fold_from_its_own_package(tmp_path, lib):
    """Where `make bench` made the peer's virtualenv: its runner trains DCN, DNN and LR on a fold written by
    ranking.prepare, and its DCN finds the signal the synthetic log was drawn with."""
    from ranking.prepare import PrepareConfig, prepare
    from tests.ranking.test_prepare import criteo_log

    if not (ctr_bench.VENVS / lib / ".ok").exists():
        pytest.skip(f"no .bench-venvs/{lib} (benchmarks/peers/setup_venvs.sh {lib} makes it)")
    src = criteo_log(tmp_path / "log.txt", n=3000)
    prepare(PrepareConfig(input=str(src), format="criteo", out=str(tmp_path / "fold"), folds=5, fold=0))
    result = ctr_bench.run_peer(lib, tmp_path / "fold", 0)
    assert isinstance(result, dict), result
    assert set(result) == {"dcn", "dnn", "lr"}
    # The log's oracle AUC is about 0.79; both peers reach 0.67-0.68 on its 2,400 training rows; 600 test rows give
    # a standard error near 0.02, so 0.62 is well clear of chance and of noise.
    assert result["dcn"]["auc"] > 0.62 and 0 < result["dcn"]["logloss"] < 0.69
