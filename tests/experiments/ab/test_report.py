"""experiments.ab.report: the HTML export of an executed notebook and the per-segment lifts, on hand-made inputs."""

from __future__ import annotations

import re

import nbformat
import pandas as pd
import pytest

from experiments.ab import report

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def test_notebook_html_renders_markdown_and_embeds_images():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Did it lift CTR?\n\nSegments:\n\n- head queries\n- new products"),
        nbformat.v4.new_code_cell("plot()", execution_count=1, outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": PNG, "text/plain": "<Figure>"})]),
    ]
    html = report.notebook_html(nb, title="t")
    assert re.search(r"<h1[^>]*>Did it lift CTR\?", html)
    assert re.findall(r"<li>(.*?)</li>", html) == ["head queries", "new products"]
    assert "# Did it lift CTR?" not in html  # not the markdown source as text
    assert f"data:image/png;base64,{PNG}" in html  # the figure is in the page
    assert not re.search(r"<(script|link)[^>]+(src|href)=", html)  # self-contained: nothing loaded from the network


def _log(**segments) -> pd.DataFrame:
    """Users 1, 2 control and 3, 4 treatment, two requests each (new_products some / none), 50 impressions each.
    CTR: 'some' control 10/100, treatment 15/100 (lift +50%); 'none' 10/100 both (lift 0)."""
    clicks = {(1, "some"): 4, (2, "some"): 6, (3, "some"): 7, (4, "some"): 8,
              (1, "none"): 5, (2, "none"): 5, (3, "none"): 4, (4, "none"): 6}
    rows = [{"user_id": u, "arm": "control" if u <= 2 else "treatment", "request_id": 10 * u + (s == "some"),
             "impressions": 50, "clicks": c, "conversions": c // 2, "new_products": s}
            for (u, s), c in clicks.items()]
    return pd.DataFrame(rows).assign(**segments)


def test_segment_lifts_include_new_products_with_hand_computed_lifts():
    table = report.segment_lifts(_log()).set_index("segment")
    assert list(table.index) == ["new_products=none", "new_products=some"]
    assert table.loc["new_products=some", "rel_lift"] == pytest.approx(0.5)
    assert table.loc["new_products=none", "rel_lift"] == pytest.approx(0.0)
    assert table.loc["new_products=some", "impressions"] == 200
    assert (table["users"] == 4).all()


def test_segment_lifts_only_for_the_segment_columns_a_log_has():
    log = _log(user_history=["returning", "new"] * 4)
    assert report.segment_lifts(log)["segment"].str.split("=").str[0].unique().tolist() == [
        "user_history", "new_products"]
    own = log.drop(columns=["new_products", "user_history"])  # a user's own log without segment columns
    assert report.segment_lifts(own).empty
    assert report.segment_lifts(log.drop(columns=["new_products"]))["segment"].str.startswith("user_history").all()
