"""gfmtune: fine-tuning geospatial foundation models for crop-type mapping (PASTIS-HD).

The public Python entry points (docs/api.md) are attributes of this package, imported on first
use: ``import gfmtune`` stays as quick as ``gfmtune --version`` needs (no torch), and
``gfmtune.CellJob`` imports the training code when it is asked for.
"""

from __future__ import annotations

import importlib
import tomllib
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it (docs/api.md)
EXPORTS: dict[str, str] = {
    "SyntheticSpec": "gfmtune.data.synthetic",
    "write_synthetic_pastis": "gfmtune.data.synthetic",
    "convert": "gfmtune.data.store",
    "open_store": "gfmtune.data.reader",
    "FrameReader": "gfmtune.data.reader",
    "PastisZarrDataset": "gfmtune.data.dataset",
    "write_label_splits": "gfmtune.data.manifests",
    "write_timesteps": "gfmtune.data.manifests",
    "REGISTRY": "gfmtune.models.registry",
    "get_spec": "gfmtune.models.registry",
    "build_model": "gfmtune.models.registry",
    "register_model": "gfmtune.models.registry",
    "TrainSettings": "gfmtune.train.settings",
    "Cell": "gfmtune.train.job",
    "Inputs": "gfmtune.train.job",
    "CellJob": "gfmtune.train.job",
}

__all__ = [  # written out for linters and type checkers (tests/test_api_docs.py: EXPORTS)
    "REGISTRY",
    "Cell",
    "CellJob",
    "FrameReader",
    "Inputs",
    "PastisZarrDataset",
    "SyntheticSpec",
    "TrainSettings",
    "__version__",
    "build_model",
    "convert",
    "get_spec",
    "open_store",
    "register_model",
    "write_label_splits",
    "write_synthetic_pastis",
    "write_timesteps",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time, __getattr__ imports
    from gfmtune.data.dataset import PastisZarrDataset
    from gfmtune.data.manifests import write_label_splits, write_timesteps
    from gfmtune.data.reader import FrameReader, open_store
    from gfmtune.data.store import convert
    from gfmtune.data.synthetic import SyntheticSpec, write_synthetic_pastis
    from gfmtune.models.registry import REGISTRY, build_model, get_spec, register_model
    from gfmtune.train.job import Cell, CellJob, Inputs
    from gfmtune.train.settings import TrainSettings


def __getattr__(name: str) -> Any:
    """An entry point of :data:`EXPORTS`, imported from its module at first use."""
    module = EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gfmtune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *EXPORTS})


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
