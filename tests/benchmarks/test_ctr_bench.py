"""benchmarks.ctr_bench: the summary table, the paired differences, the run cache (resume, rerun that only
summarises), the alternating throughput rounds, the replicated Criteo log, the clean exit without the shared data,
the FuxiCTR runner's batches; and (marker `peers`, run by `make bench` before the benchmark, not by `make test`)
each peer's runner on a tiny prepared fold in its own virtualenv, in both modes."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from benchmarks import common, ctr_bench


def _row(lib, model, auc, fold=0, seed=0, logloss=0.45, dataset="criteo"):
    return {"dataset": dataset, "fold": fold, "seed": seed, "library": lib, "model": model, "auc": auc,
            "logloss": logloss}


def test_summary_gives_mean_and_spread_per_library_and_model():
    rows = [_row("ours", "dcn", a, fold=f) for f, a in enumerate((0.70, 0.72, 0.74))]
    rows.append(_row("deepctr", "dcn", 0.71, logloss=0.46))
    text = ctr_bench.summarise(rows, ["no virtualenv .bench-venvs/fuxictr"])
    assert "| criteo | ours | dcn | 3 | 0.7200 ± 0.0200 | 0.4500 ± 0.0000 |" in text
    assert "| criteo | deepctr | dcn | 1 | 0.7100 | 0.4600 |" in text
    # one (fold, seed) pair in common: 0.70 - 0.71; no standard error, so no verdict
    assert "| criteo | dcn | deepctr dcn | 1 | -0.0100 | n/a (1 pair) | -0.0100 |" in text
    assert "Not run:\n- no virtualenv .bench-venvs/fuxictr" in text


def test_paired_differences_pair_by_fold_and_seed_and_give_mean_se_and_verdict():
    ours = {(0, 0): 0.74, (0, 1): 0.70, (1, 0): 0.78, (2, 0): 0.90}  # (2, 0): the peer did not run it
    peer = {(0, 0): 0.73, (0, 1): 0.72, (1, 0): 0.74, (3, 0): 0.50}
    rows = [_row("ours", "dcn", a, f, s) for (f, s), a in ours.items()]
    rows += [_row("fuxictr", "dcn", a, f, s) for (f, s), a in peer.items()]
    rows += [_row("ours", "dcn", 0.10, 0, 0, dataset="avazu")]  # another data set: never paired with criteo
    diffs = ctr_bench.paired_differences(rows, "criteo", "dcn", "fuxictr", "dcn", "auc")
    assert diffs == pytest.approx([0.01, -0.02, 0.04])
    # mean 0.01; deviations 0, -0.03, 0.03 -> sd sqrt(0.0018 / 2) = 0.03; SE 0.03 / sqrt(3)
    s = ctr_bench.paired_summary(diffs)
    assert s["pairs"] == 3 and s["mean"] == pytest.approx(0.01) and s["se"] == pytest.approx(0.03 / math.sqrt(3))
    assert s["ok"] is True
    # mean -0.02, deviations -0.01 and 0.01 -> sd sqrt(0.0002) , SE 0.01: -0.02 < -0.01, below peer - 1 SE
    worse = ctr_bench.paired_summary([-0.03, -0.01])
    assert worse["mean"] == pytest.approx(-0.02) and worse["se"] == pytest.approx(0.01) and worse["ok"] is False
    assert ctr_bench.paired_summary([0.0])["ok"] is False and math.isnan(ctr_bench.paired_summary([0.0])["se"])
    table = ctr_bench.paired_table(rows)
    assert [(p["dataset"], p["ours"], p["peer"], p["auc"]["pairs"]) for p in table] == [("criteo", "dcn", "fuxictr", 3)]
    text = ctr_bench.summarise(rows, [])
    assert "| criteo | dcn | fuxictr dcn | 3 | +0.0100 ± 0.0173 | yes | +0.0000 ± 0.0000 |" in text


def _fake_runs(monkeypatch, calls, fail_at=None):
    """ctr_bench's fold preparation and runs replaced by fakes that record (library, data set, fold, seed); the
    `fail_at`-th run raises, as a killed bench would stop."""
    def prepare(ds, fold, folds, out):
        out.mkdir(parents=True)
        return out

    def run(lib, ds, fold, seed):
        calls.append((lib, ds, fold, seed))
        if len(calls) == fail_at:
            raise KeyboardInterrupt
        return {"dcn": {"auc": 0.7 + 0.01 * fold + 0.001 * seed + (0.002 if lib == "ours" else 0), "logloss": 0.4}}

    monkeypatch.setattr(ctr_bench, "prepare_fold", prepare)
    monkeypatch.setattr(ctr_bench, "run_ours", lambda folder, seed, tmp, overrides: run(
        "ours", folder.name.split("_")[0], int(folder.name[-1]), seed))
    monkeypatch.setattr(ctr_bench, "run_peer", lambda lib, folder, seed: run(
        lib, folder.name.split("_")[0], int(folder.name[-1]), seed))


def _args(*extra):
    return ["--datasets", "criteo", "--folds", "2", "--seeds", "2", "--peers", "deepctr", *extra]


def test_runs_are_cached_an_interrupted_bench_resumes_and_a_rerun_only_summarises(tmp_path, monkeypatch):
    cache, summary = tmp_path / "runs", tmp_path / "ctr.md"
    monkeypatch.setattr(ctr_bench, "SHARED", tmp_path)
    monkeypatch.setattr(ctr_bench, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")  # the summary's JSON lines
    calls = []
    _fake_runs(monkeypatch, calls, fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        ctr_bench.main(_args("--cache", str(cache), "--summary", str(summary)))
    # seed by seed, then fold, then library: the 4th run (fold 1, seed 0, deepctr) was interrupted
    assert calls == [("ours", "criteo", 0, 0), ("deepctr", "criteo", 0, 0), ("ours", "criteo", 1, 0),
                     ("deepctr", "criteo", 1, 0)]
    assert sorted(p.name for p in cache.iterdir()) == ["criteo-k2-fold0-seed0-deepctr.json",
                                                        "criteo-k2-fold0-seed0-ours.json",
                                                        "criteo-k2-fold1-seed0-ours.json"]
    stored = json.loads((cache / "criteo-k2-fold1-seed0-ours.json").read_text())
    assert (stored["library"], stored["fold"], stored["seed"], stored["overrides"]) == ("ours", 1, 0, [])
    assert stored["models"]["dcn"]["auc"] == pytest.approx(0.712)

    calls.clear()
    _fake_runs(monkeypatch, calls)
    ctr_bench.main(_args("--cache", str(cache), "--summary", str(summary)))
    assert calls == [("deepctr", "criteo", 1, 0), ("ours", "criteo", 0, 1), ("deepctr", "criteo", 0, 1),
                     ("ours", "criteo", 1, 1), ("deepctr", "criteo", 1, 1)]  # only what was missing
    text = summary.read_text()
    lines = [json.loads(line) for line in (tmp_path / "results" / "ctr_bench.jsonl").read_text().splitlines()]
    paired = [x for x in lines if x["metric"] == "paired_auc_difference"]
    assert [(x["value"], x["pairs"], x["ours_at_least_peer_minus_1se"]) for x in paired] == [(0.002, 4, True)]
    # 4 pairs, each ours - deepctr = +0.002 exactly: SE 0 and the verdict holds
    assert "| criteo | dcn | deepctr dcn | 4 | +0.0020 ± 0.0000 | yes |" in text
    assert "| criteo | ours | dcn | 4 | 0.7075 ± 0.0058 |" in text  # 0.702, 0.703, 0.712, 0.713

    calls.clear()
    assert ctr_bench.main(_args("--cache", str(cache), "--summary", str(summary))) == 0
    assert calls == [] and "| criteo | dcn | deepctr dcn | 4 | +0.0020 ± 0.0000 | yes |" in summary.read_text()
    # a look at a partial bench: a third seed is asked for, nothing runs, the summary says what is missing
    ctr_bench.main(_args("--cache", str(cache), "--summary", str(summary), "--seeds", "3", "--cached-only"))
    assert calls == [] and "- 4 of the 12 runs asked for are not cached yet (--cached-only)" in summary.read_text()
    # other overrides of ours: our runs again, the peer's stay cached; --only-folds picks the folds
    ctr_bench.main(_args("--cache", str(cache), "--summary", str(summary), "--set", "net.embedding_l2=1e-5",
                         "--only-folds", "1"))
    assert calls == [("ours", "criteo", 1, 0), ("ours", "criteo", 1, 1)]
    with pytest.raises(SystemExit):  # a fold outside the split: argparse's one-line error, exit 2
        ctr_bench.main(_args("--only-folds", "2"))


def test_throughput_rounds_alternate_the_libraries_and_give_medians_and_ratios(tmp_path, monkeypatch):
    roof = {"matmul_gflops": 100.0, "mflop_per_example": 2.0, "fit_examples_per_s": 10_000.0,
            "fit_examples_per_s_median": 9_000.0, "step_examples_per_s": 30_000.0, "fit_gflops": 20.0,
            "step_gflops": 60.0, "fit_roof_fraction": 0.2, "step_roof_fraction": 0.6}
    order, rates = [], {"ours": iter([30.0, 10.0, 20.0]), "deepctr": iter([5.0, 4.0, 6.0]),
                        "fuxictr": iter([8.0, 12.0, 10.0])}

    def prepared(rows, tmp):
        (tmp / "metadata.json").write_text(json.dumps({"rows": {"train": 600}, "vocab_sizes": {"C1": 5, "C2": 7}}))
        return tmp

    def run(lib):
        order.append(lib)
        return {"examples_per_s": next(rates[lib]), **({"roof": roof} if len(order) == 7 else {})}

    monkeypatch.setattr(ctr_bench, "prepare_throughput", prepared)
    monkeypatch.setattr(ctr_bench, "run_ours_throughput", lambda folder, epochs, threads, roof: run("ours"))
    monkeypatch.setattr(ctr_bench, "run_peer", lambda lib, folder, seed, *extra: run(lib))
    args = argparse.Namespace(rows=600, peers=["deepctr", "fuxictr"], rounds=3,
                                                             epochs=1, threads=2)
    t = ctr_bench.throughput(args, tmp_path)
    assert order == ["ours", "deepctr", "fuxictr"] * 3
    assert t["medians"] == {"ours": 20.0, "deepctr": 5.0, "fuxictr": 10.0}
    assert t["ratios"] == {"deepctr": 4.0, "fuxictr": 2.0}
    assert (t["rows"], t["vocabulary"], t["roof"]) == (600, 12, roof)  # from our last round's process
    text = ctr_bench.throughput_markdown(t)
    assert "| deepctr | 5 (load" in text and "| 5 | 4.00x |" in text and "| 10 | 2.00x |" in text
    assert "| the compiled step on one cached batch | 30,000 | 60.0 | 0.600 |" in text


def test_the_replicated_criteo_log_grows_its_vocabulary_in_later_replicas(tmp_path):
    src = tmp_path / "train.txt"
    lines = ["1\t" + "\t".join(str(i) for i in range(13)) + "\t" + "\t".join(["a", ""] + ["b"] * 24),
             "0\t" + "\t".join([""] * 13) + "\t" + "\t".join(["c"] * 26)]
    src.write_text("\n".join(lines) + "\n")
    out = ctr_bench.replicate_criteo(src, tmp_path / "big.txt", rows=5, share=1.0)
    got = out.read_text().splitlines()
    assert got[:2] == lines  # replica 0 as it was
    assert got[2] == lines[0].replace("\ta\t", "\ta_1\t").replace("\tb", "\tb_1")  # empty values stay empty
    assert got[3].split("\t")[:14] == lines[1].split("\t")[:14] and set(got[3].split("\t")[14:]) == {"c_1"}
    assert got[4].split("\t")[14] == "a_2" and len(got) == 5
    none = ctr_bench.replicate_criteo(src, tmp_path / "same.txt", rows=4, share=0.0).read_text().splitlines()
    assert none == lines * 2


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


@pytest.mark.peers
@pytest.mark.parametrize("lib", ["deepctr", "fuxictr"])
def test_each_peer_measures_its_dcn_training_throughput(tmp_path, lib):
    """The throughput mode: the DCN alone, every train row once per epoch, a positive rate."""
    from ranking.prepare import PrepareConfig, prepare
    from tests.ranking.test_prepare import criteo_log

    if not (ctr_bench.VENVS / lib / ".ok").exists():
        pytest.skip(f"no .bench-venvs/{lib} (benchmarks/peers/setup_venvs.sh {lib} makes it)")
    src = criteo_log(tmp_path / "log.txt", n=3000)
    meta = prepare(PrepareConfig(input=str(src), format="criteo", out=str(tmp_path / "fold"), folds=5, fold=0))
    result = ctr_bench.run_peer(lib, tmp_path / "fold", 0, "--throughput", "2", "--threads", "2")
    assert isinstance(result, dict), result
    assert result["examples"] == 2 * meta["rows"]["train"]
    assert result["examples_per_s"] == pytest.approx(result["examples"] / result["seconds"]) and result["seconds"] > 0
