"""gfmtune: fine-tuning geospatial foundation models for crop-type mapping (PASTIS-HD)."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path


def _version() -> str:
    """``pyproject.toml``'s version: read from the checkout this package runs from (so
    ``PYTHONPATH=src`` beside another installed gfmtune reports this code's), else from the
    installed distribution's metadata, else ``0+unknown``."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text()).get("project", {})
        if project.get("name") == "gfmtune":
            return project["version"]
    try:
        return metadata.version("gfmtune")
    except metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _version()
