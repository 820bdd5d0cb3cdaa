"""The A/B notebooks (experiments/notebooks/*.ipynb) run headless with nbclient on a tiny simulated log (the tiny
world's test days, an oracle treatment vs the incumbent order) and their HTML copies show every table and plot."""

from __future__ import annotations

import json

import nbformat
import numpy as np
import pytest

from experiments import ab_simulate as sim
from experiments.ab.report import execute_notebook
from tests.conftest import ROOT

NOTEBOOKS = ROOT / "experiments" / "notebooks"


@pytest.fixture(scope="module")
def experiment(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ab_notebooks")
    candidates = sim.impression_candidates(tiny_world)
    scores = {"control": -candidates.table.column("position").to_numpy().astype(float),
              "treatment": candidates.attraction}
    positions = {arm: sim.shown_positions(candidates.request, scores[arm], 4) for arm in sim.ARMS}
    log = sim.simulate_log(candidates, positions, "nb", seed=0)
    log_path = sim.write_log(log, out / "log")
    (out / "truth.json").write_text(json.dumps(sim.true_lift(candidates, positions)))
    interleaving = sim.interleaving_summary(candidates, scores, log, 4, seed=0, n_boot=20)
    (out / "interleaving.json").write_text(json.dumps(interleaving))
    return {"LOG": str(log_path), "TRUTH": str(out / "truth.json"),
            "INTERLEAVING": str(out / "interleaving.json"), "TREATMENT_SHARE": 0.5}, out


def test_notebooks_are_stored_without_outputs_and_with_a_parameters_cell():
    paths = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert [p.name[:3] for p in paths][:2] == ["01_", "02_"]
    for path in paths:
        nb = nbformat.read(str(path), as_version=4)
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), path
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in nb.cells if c.cell_type == "code"), f"{path}: clear the outputs before committing"


@pytest.mark.parametrize("name, images", [
    ("01_did_the_treatment_lift_ctr_and_conversion", 3),  # lift, cumulative lift, segments
    ("02_interleaving_vs_ab_how_many_users", 1),
])
def test_notebook_runs_headless_and_writes_html(experiment, name, images):
    parameters, out = experiment
    html = execute_notebook(NOTEBOOKS / f"{name}.ipynb", out / f"{name}.html", parameters, timeout=120,
                            executed_path=out / f"{name}.ipynb")
    text = html.read_text()
    assert text.count("data:image/png;base64") >= images
    executed = nbformat.read(out / f"{name}.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert outputs and not [o for o in outputs if o.output_type == "error"]  # every cell ran, none failed
    assert "Traceback" not in text
    executed = nbformat.read(str(out / f"{name}.ipynb"), as_version=4)
    assert all(c.get("execution_count") for c in executed.cells if c.cell_type == "code")
    if name.startswith("01"):
        assert "true_rel_lift" in text and "no sample ratio mismatch" in text
        assert "returning" in text and "head" in text  # segments
    assert np.isfinite(json.loads((out / "truth.json").read_text())["true_rel_lift_ctr"])
