"""`report.html` beside `report.md`: one self-contained file (figures embedded, nothing fetched)
with every heading and figure of the Markdown report."""

import re
from types import SimpleNamespace

import pytest

from ndae.reporting.html import report_html, write_report_html


def _png(path, label):
    from matplotlib.figure import Figure

    from ndae.io import atomic_save_figure

    figure = Figure(figsize=(2, 1.5))
    axis = figure.subplots()
    axis.plot([0, 1], [0, 1], label=label)
    axis.set_xlabel("x (units)")
    atomic_save_figure(path, figure)


def _external_references(document: str) -> list[str]:
    """Every src/href that would make a browser fetch something: anything but an inline data URI."""
    return [value for value in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", document, flags=re.I)
            if not value.startswith("data:")] + re.findall(r"url\(|@import|<link|<script", document, flags=re.I)


@pytest.fixture()
def report(tmp_path):
    (tmp_path / "survival").mkdir()
    _png(tmp_path / "survival" / "km.png", "km")
    _png(tmp_path / "loss.png", "loss")
    text = "\n".join([
        "# Federated NDAE run", "", "**Verdict.** the imaging adds *nothing* here; see `survival/cox.json`.", "",
        "- sites: 3 (site1, site2, site3)", "- a line with <script>alert(1)</script> in it", "",
        "## Sites", "", "| site | controls | note |", "|---|---|---|", "| site1 | 8 | a \\| pipe |", "| site2 | 9 | |", "",
        "## Survival", "", "![Kaplan–Meier by tertile](survival/km.png) (log-rank p = 0.01)", "",
        "### Figures", "", "![DAE training loss](loss.png)", "", "![gone](missing.png)", "",
        "A link to [the docs](https://example.org/docs) stays text.", ""])
    path = tmp_path / "report.md"
    path.write_text(text)
    return path


def test_the_html_is_self_contained_and_has_every_heading_and_figure(report):
    target = write_report_html(report)
    assert target == report.with_suffix(".html")
    document = target.read_text()
    assert _external_references(document) == []
    for level, heading in ((1, "Federated NDAE run"), (2, "Sites"), (2, "Survival"), (3, "Figures")):
        assert f"<h{level}>{heading}</h{level}>" in document
    assert document.count('src="data:image/png;base64,') == 2  # both figures that exist, embedded
    assert "figure not available: gone" in document
    assert "<figcaption>Kaplan–Meier by tertile (log-rank p = 0.01)</figcaption>" in document  # text after a figure: its caption


def test_markdown_marks_tables_and_escaping(report):
    document = report_html(report)
    assert "<strong>Verdict.</strong>" in document and "<em>nothing</em>" in document
    assert "<code>survival/cox.json</code>" in document
    assert "<th>site</th>" in document and "<td>site1</td>" in document and "<td>a | pipe</td>" in document
    assert "<li>sites: 3 (site1, site2, site3)</li>" in document
    assert "&lt;script&gt;" in document and "<script>" not in document
    assert "the docs (<code>https://example.org/docs</code>)" in document
    assert "<title>Federated NDAE run</title>" in document


def test_a_failed_federated_run_gets_its_html_beside_its_report(tmp_path):
    from ndae.federation.server.report import write_failure_report

    config = SimpleNamespace(privacy=False, effective_survival_mode="pooled")
    path = write_failure_report(tmp_path, config, "FederationError: too few sites", [])
    document = path.with_suffix(".html").read_text()
    assert "<h1>Federated NDAE run: failed</h1>" in document and _external_references(document) == []
