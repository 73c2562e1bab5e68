"""What the HTML report shows: the landing page (``rules/captions/workflow.rst``, rendered as
Snakemake renders it) says when the data are synthetic and includes the paper-layout tables and
the claims, which ``gfmtune results`` also writes as HTML."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
from docutils.core import publish_parts
from jinja2 import Environment

from gfmtune.results.command import write_results
from tests.results.test_results import _fake_cell
from tests.workflow_helpers import REPO

LANDING = REPO / "rules" / "captions" / "workflow.rst"
CAVEAT = "Its numbers test the workflow, not the paper's findings."


def landing_page(config: dict, files: list[Path], workdir: Path) -> str:
    """The landing page's HTML as ``snakemake --report`` makes it: the caption through Jinja
    (its Environment's options, ``snakemake.config`` and the report's ``files``), then
    docutils from the working directory; any reStructuredText warning fails."""
    records = [SimpleNamespace(path=f.relative_to(workdir), target=f.name) for f in files]
    text = Environment(trim_blocks=True, lstrip_blocks=True).from_string(LANDING.read_text())
    rst = text.render(snakemake=SimpleNamespace(config=config), categories={}, files=records)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        parts = publish_parts(rst, writer="html", settings_overrides={"halt_level": 2})
    return parts["html_body"]


class _Tables(HTMLParser):
    """Each table's cells as text, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables_of(html: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def _run(folder: Path, synthetic: bool, models=(("croma_tiny", [0.0, 1.0]), ("utae_tiny", [None]))):
    cells = [
        _fake_cell(folder / "cells", model, ft, percent, t, 0, 0.2 + 0.01 * t + 0.001 * i)
        for i, (model, fts) in enumerate(models)
        for ft in fts
        for percent in ("100", "10")
        for t in (1, 6)
    ]
    return write_results(cells, folder / "results" / "demo", synthetic=synthetic)


DEMO = {"run": "demo", "data": {"source": "synthetic"}, "models": ["croma_tiny", "utae_tiny"]}
PAPER = {"run": "paper", "data": {"source": "huggingface"}, "models": ["croma", "utae"]}


@pytest.mark.parametrize("config", [DEMO, PAPER, {**DEMO, "models": ["croma"]}])
def test_landing_page_says_when_the_data_are_synthetic(tmp_path: Path, config: dict) -> None:
    page = landing_page(config, [], tmp_path)
    synthetic = config["data"]["source"] == "synthetic"
    assert (CAVEAT in page.replace("&#39;", "'")) == synthetic
    assert ("not PASTIS-HD" in page) == synthetic
    assert (
        "Synthetic data: this run trained on the embedded synthetic dataset" in page
    ) == synthetic
    assert ("on PASTIS-HD Sentinel-2 series (data.source: huggingface)" in page) == (not synthetic)
    assert ("Tiny models: croma_tiny, utae_tiny" in page) == (config is DEMO)
    assert f'run <tt class="docutils literal">{config["run"]}</tt>' in page
    assert '<style class="gfmtune-landing">' in page  # room for the tables, scrolled from the top


def test_landing_page_shows_the_tables_and_the_claims(tmp_path: Path) -> None:
    written = _run(tmp_path, synthetic=True)
    files = [*written["tables"], *written["claims"]]
    page = landing_page(DEMO, files, tmp_path)
    layout, claims = tables_of(page)
    assert layout[0] == ["", "100 % of the labels", "10 % of the labels"]
    assert layout[1] == ["model", "t=1", "t=6", "t=1", "t=6"]
    assert [row[0] for row in layout[2:]] == ["CROMA 0.0", "CROMA 1.0", "U-TAE"]
    markdown = (tmp_path / "results" / "demo" / "tables" / "miou_100_10.md").read_text()
    for row in layout[2:]:  # the values of the Markdown table, in the same places
        assert "| " + " | ".join(row) + " |" in markdown.replace("**", "")
    assert claims[0][:3] == ["claim", "verdict", "decided on"]
    assert len(claims) == 1 + 8
    assert "On synthetic data and tiny randomly initialised models" in page  # the files' caveat


def test_html_renderings_match_the_markdown(tmp_path: Path) -> None:
    written = _run(tmp_path, synthetic=False)
    run = tmp_path / "results" / "demo"
    assert run / "claims.html" in written["claims"]
    assert run / "tables" / "miou_100_10.html" in written["tables"]
    (claims,) = tables_of((run / "claims.html").read_text())
    markdown = (run / "claims.md").read_text().splitlines()
    rows = [line for line in markdown if line.startswith("| ")]
    assert len(claims) == len(rows)
    for cells, line in zip(claims, rows, strict=True):
        assert "| " + " | ".join(cells) + " |" == line.replace("**", "")
    layout = (run / "tables" / "miou_100_10.html").read_text()
    assert layout.count("<strong>") == 4  # the best of each of the four columns
    assert 'class="caveat"' in layout  # tiny models: the caveat, as in the Markdown
