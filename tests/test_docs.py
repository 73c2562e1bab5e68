"""Every relative link and ``#anchor`` in README.md and docs/*.md resolves (GitHub's rules)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from tests.workflow_helpers import REPO

FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def doc_files(root: Path) -> list[Path]:
    """The README and every Markdown file under docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """Markdown text without fenced code blocks and code spans (links there are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; repeated slugs get -1, -2, ... as on GitHub."""
    seen: Counter[str] = Counter()
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if seen[base] else base)
        seen[base] += 1
    return found


def broken_links(path: Path) -> list[str]:
    """Each relative link of ``path`` whose file or anchor does not exist, as 'file: link'."""
    broken = []
    for target in LINK.findall(prose(path.read_text())):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{path.name}: {target} (no file {linked})")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{path.name}: {target} (no heading #{anchor} in {linked.name})")
    return broken


@pytest.mark.parametrize("path", doc_files(REPO), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_docs_index_lists_every_topic_file() -> None:
    index = (REPO / "docs" / "README.md").read_text()
    topics = {p.name for p in doc_files(REPO)[1:] if p.name != "README.md"}
    assert topics, "docs/ holds no Markdown files"
    assert {name for name in topics if f"]({name})" not in index} == set()


def test_checker_reports_missing_files_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# Stage 1: data\n\n## The authors' run\n\n## Run\n\n## Run\n\n"
        "[ok](#stage-1-data) [ok](#the-authors-run) [ok](#run-1) [ok](../README.md#top)\n"
        "[bad](#the-authors-run-1) [bad](b.md) [bad](../README.md#missing)\n"
        "`[code](nowhere.md)` [web](https://example.org/x.md)\n"
        "```\n[fenced](nowhere.md)\n```\n"
    )
    (tmp_path / "README.md").write_text("# Top\n[x](docs/a.md#run)\n")
    assert broken_links(tmp_path / "README.md") == []
    assert [line.split(" (")[0] for line in broken_links(tmp_path / "docs" / "a.md")] == [
        "a.md: #the-authors-run-1",
        "a.md: b.md",
        "a.md: ../README.md#missing",
    ]


@pytest.mark.parametrize(
    "heading, anchor",
    [
        ("Stage 2: the Zarr store", "stage-2-the-zarr-store"),
        ("The authors' run", "the-authors-run"),
        ("Data: stages 1-3", "data-stages-1-3"),
        ("What `bench-train` measures", "what-bench-train-measures"),
        ("See [docs](x.md) now", "see-docs-now"),
    ],
)
def test_slug_follows_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor
