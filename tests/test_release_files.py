"""LICENSE, CITATION.cff and CHANGELOG.md agree with pyproject.toml and with each other."""

from __future__ import annotations

import tomllib

import yaml

from gfmtune.results.published import CITATION
from tests.workflow_helpers import REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_license_is_pyprojects() -> None:
    text = (REPO / "LICENSE").read_text()
    assert PROJECT["license"] == "MIT" and text.startswith("MIT License\n")
    assert "Copyright (c) 2026 gfmtune contributors" in text


def test_citation_names_this_version_and_the_rebuilt_paper() -> None:
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["version"] == PROJECT["version"] and cff["license"] == PROJECT["license"]
    (paper,) = cff["references"]
    assert paper["title"] in CITATION and paper["year"] == 2025
    assert paper["authors"][0]["family-names"] == CITATION.split()[0]
    assert "doi" not in cff and "doi" not in paper  # none has been assigned here


def test_changelog_has_a_section_for_this_version() -> None:
    assert f"\n## {PROJECT['version']} " in (REPO / "CHANGELOG.md").read_text()
