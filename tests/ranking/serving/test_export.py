"""ranking.serving.export (`python -m ranking.serving.export`): export an MLflow run as a new version, register
it with an alias, verify an export in a fresh process, and one clear line for every bad argument."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

from ranking.serving.contract import resolve_version_dir
from ranking.serving.export import main
from tests.conftest import ROOT

MODEL = "dashclip_two_tower"
REGISTERED = f"pctr-{MODEL}"


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_export_versions_registry_and_alias(trained, capsys):
    client, run = trained.client, trained.model_run
    out = trained.exports.parent / "cli_exports"
    assert main(["--run", run.info.run_id, "--out", str(out), "--alias", "champion"]) == 0
    v1 = out / MODEL / "1"
    before = _tree_digest(v1)
    assert str(client.get_model_version_by_alias(REGISTERED, "champion").version) == "1"
    # Export again from the alias: a new version, version 1 untouched.
    assert main(["--run", f"models:/{REGISTERED}@champion", "--out", str(out), "--alias", "challenger"]) == 0
    assert sorted(p.name for p in (out / MODEL).iterdir()) == ["1", "2"]
    assert _tree_digest(v1) == before
    challenger = client.get_model_version_by_alias(REGISTERED, "challenger")
    assert str(challenger.version) == "2" and challenger.run_id == run.info.run_id
    assert challenger.tags["serving_version"] == "2"
    assert challenger.source.endswith(f"serving/{MODEL}/2")
    assert str(client.get_model_version_by_alias(REGISTERED, "champion").version) == "1"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, f"serving/{MODEL}/2")}
    assert f"serving/{MODEL}/2/saved_model.pb" in logged and f"serving/{MODEL}/2/assets.extra" in logged
    assert "registered as pctr-dashclip_two_tower version 2 (alias challenger)" in capsys.readouterr().out
    assert main(["--run", f"models:/{REGISTERED}/1", "--out", str(out)]) == 0  # by version number
    assert (out / MODEL / "3" / "saved_model.pb").exists()
    (out / MODEL / "10-not-a-version").mkdir()
    assert resolve_version_dir(out / MODEL) == out / MODEL / "3"  # a model folder means its highest version
    assert resolve_version_dir(v1) == v1


def test_verify_in_a_fresh_process(trained):
    done = subprocess.run([sys.executable, "-m", "ranking.serving.export", "--verify", str(trained.version)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "project modules loaded there: none" in done.stdout
    diffs = [float(x) for x in re.findall(r"max \|SavedModel - Keras\| = (\S+)", done.stdout)]
    assert len(diffs) == 2 and max(diffs) <= 1e-5
    assert re.search(r"max abs diff \S+ \(tolerance 1e-05\): OK", done.stdout)
    assert "signature_def['serving_default']" in done.stdout and "signature_def['serve_tf_example']" in done.stdout


def test_cli_errors_are_one_clear_line(trained, tmp_path, capsys):
    parent = trained.parent
    cases = [
        (["--run", "0123456789abcdef0123456789abcdef", "--out", str(tmp_path)], "no such MLflow run"),
        (["--run", parent.info.run_id, "--out", str(tmp_path)], f"has no `checkpoint` tag.*{MODEL}: "),
        (["--run", f"models:/{REGISTERED}@nobody", "--out", str(tmp_path)], "not in the model registry"),
        (["--verify", str(tmp_path / "absent" / "1")], "is not a ranking export"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert re.search(message, err), err
        assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written by the failed exports


def test_a_model_with_nan_weights_is_refused_before_anything_is_written(trained, tmp_path, capsys, monkeypatch):
    """A diverged model (a NaN weight, as an infinite input trains one) is refused with a message that says its
    predictions are not finite; before: the export failed in the weight copy with "the weights did not copy
    into the serving model" and left an empty <out>/<model> folder."""
    import numpy as np

    from ranking.serving import export

    rebuild = export.rebuild_model

    def diverged(client, run):
        model = rebuild(client, run)
        weight = model.trainable_weights[0]
        weight.assign(np.full(weight.shape, np.nan, weight.dtype.as_numpy_dtype))
        return model

    monkeypatch.setattr(export, "rebuild_model", diverged)
    out = tmp_path / "exports"
    assert main(["--run", trained.model_run.info.run_id, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: MLflow run {trained.model_run.info.run_id}: the model's predictions are not finite "
                        r"\(\d+ of \d+ warm-up rows of .*/test score NaN or inf; \d+ weight tensors hold NaN or inf, "
                        r"e\.g\. .*\): its training diverged, nothing exported\n", err), err
    assert not out.exists()
