"""Every relative link and ``#anchor`` in README.md and docs/*.md resolves (GitHub's rules), and
every file the repository's text cites is in the repository (:func:`missing_files`)."""

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

#: Where cited files are checked, and which of their files are text.
CITING = ("README.md", "Snakefile", "src", "rules", "tests", "docs")
TEXT = {".py", ".smk", ".md", ".rst", ".yaml", ".yml", ".toml", ".txt", ".sh", ".cff"}
#: A path from a top-level folder to a file with an extension. Not one after a word character,
#: ``/``, ``.`` or ``:`` (``owner/repo:src/x.py`` names another repository's file, and is not
#: checked), nor one with a placeholder (``<run>``, ``{t}``, ``*``): those are patterns.
REPO_PATH = re.compile(
    r"(?<![\w/.:~-])((?:src|rules|tests|docs|config|envs|profiles|\.ci)/[\w./~+-]*\.[A-Za-z]+)"
    r"(?![\w/<{*-])"
)
#: A document named in capitals (``README.md``, ``CITATION.cff``): at the root or in docs/.
CAPS_FILE = re.compile(r"(?<![\w/.:-])([A-Z][A-Z0-9_-]+\.(?:md|cff))\b")
#: A section of a document named in capitals (``NAME §2``): NAME.md must be in the repository.
CAPS_SECTION = re.compile(r"\b([A-Z][A-Z0-9_-]+)(?:\.md)? §")
#: Files that the workflow or a command the text gives writes: cited, not shipped.
WRITTEN = {
    "config/pastis-hd.lock.json",  # the first Hugging Face download (data.huggingface.lock_file)
    "envs/lock-cpu-linux-x86_64-py3.11.txt",  # .ci/lock --torch-backend cpu (docs/install.md)
}
#: ``docs/x.md, "A heading"``: the heading must be in that file (line breaks and comment
#: markers inside the citation are read as spaces).
SECTION_CITE = re.compile(r'\b(docs/[\w.-]+\.md),\s*"([^"]+)"')
LINE_BREAK = re.compile(r"\s*\n\s*(?:#:?\s*)?")


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


def citing_files(root: Path) -> list[Path]:
    """The text files of :data:`CITING` under ``root`` (this test's own examples and build
    artefacts such as ``src/gfmtune.egg-info`` excluded)."""
    found = []
    for name in CITING:
        path = root / name
        files = sorted(p for p in path.rglob("*") if p.suffix in TEXT) if path.is_dir() else [path]
        found += [
            p for p in files
            if p.is_file() and p.resolve() != Path(__file__).resolve()
            and not any(part.endswith(".egg-info") for part in p.parts)
        ]  # fmt: skip
    return found


def _shipped(root: Path, name: str) -> bool:
    """Whether a document named in capitals is at the root or in docs/."""
    return (root / name).is_file() or (root / "docs" / name).is_file()


def missing_files(path: Path, root: Path) -> list[str]:
    """Each file ``path`` cites that is not under ``root``, as 'path: cited (why)'. A citation is
    a :data:`REPO_PATH` (unless :data:`WRITTEN`), a :data:`CAPS_FILE`, a :data:`CAPS_SECTION` or,
    for its heading, a :data:`SECTION_CITE`; links in Markdown are :func:`broken_links`' job."""
    text, name = path.read_text(), path.relative_to(root)
    problems = [f"{name}: {p} (no such file)" for p in REPO_PATH.findall(text)
                if not (root / p).is_file() and p not in WRITTEN]  # fmt: skip
    problems += [f"{name}: {doc} (not at the root or in docs/)"
                 for doc in CAPS_FILE.findall(text) if not _shipped(root, doc)]  # fmt: skip
    problems += [f"{name}: {doc} § (no {doc}.md)" for doc in CAPS_SECTION.findall(text)
                 if not _shipped(root, f"{doc}.md")]  # fmt: skip
    for doc, heading in SECTION_CITE.findall(LINE_BREAK.sub(" ", text)):
        if (root / doc).is_file() and slug(heading) not in anchors(root / doc):
            problems.append(f'{name}: {doc}, "{heading}" (no such heading)')
    return problems


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


def test_every_cited_file_is_in_the_repository() -> None:
    files = citing_files(REPO)
    assert len(files) > 100
    assert [problem for path in files for problem in missing_files(path, REPO)] == []


def test_checker_reports_files_not_in_the_tree(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "p.md").write_text("# P\n\n## The metric\n")
    (tmp_path / "README.md").write_text("# R\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.py").write_text(
        '"""See docs/p.md, "The metric", docs/p.md, "The\nmetric", src/m.py and README.md;\n'
        'not src/gone.py, docs/q.md, NOTES.md, BRIEF § 2, SPEC §3 or docs/p.md, "Optimisation".\n'
        "Not checked: results/<run>/config.yaml, tests/{t}.csv, owner/repo:src/x.py, src/pkg/,\n"
        'x/src/y.py, https://example.org/docs/a.md."""\n'
        '# docs/p.md,\n#: "The metric" and docs/p.md, "Missing\n#: heading"\n'
    )
    assert [p.split(": ", 1)[1] for p in missing_files(tmp_path / "src" / "m.py", tmp_path)] == [
        "src/gone.py (no such file)",
        "docs/q.md (no such file)",
        "NOTES.md (not at the root or in docs/)",
        "BRIEF § (no BRIEF.md)",
        "SPEC § (no SPEC.md)",
        'docs/p.md, "Optimisation" (no such heading)',
        'docs/p.md, "Missing heading" (no such heading)',
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
