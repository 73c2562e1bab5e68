"""The workflow configuration as ``snakemake`` builds it: the preset, then ``--configfile``
overlays in order, then ``--config`` entries, merged by Snakemake's own functions; then the
plug-ins imported and the result validated as ``rules/common.smk`` does."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gfmtune.config import validate_config
from gfmtune.models.plugins import load_plugins

#: The preset the Snakefile loads first, relative to the workflow's folder.
PRESET = Path("workflow_config.yaml")


def merged_config(
    preset: Path, configfiles: Sequence[Path] = (), entries: Sequence[str] = ()
) -> dict[str, Any]:
    """The unvalidated configuration: ``preset`` updated by the overlays merged in order and the
    ``KEY=VALUE`` entries (parsed as ``snakemake --config`` parses them)."""
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    if not Path(preset).is_file():
        raise FileNotFoundError(
            f"{preset}: no workflow preset here; run from the workflow's folder or give --preset"
        )
    config = _read(preset)
    overwrite: dict[str, Any] = {}
    for path in configfiles:
        update_config(overwrite, _read(path))
    update_config(overwrite, parse_config(list(entries)))
    update_config(config, overwrite)
    return config


def _read(path: Path) -> dict[str, Any]:
    """A configuration file read by Snakemake's reader; its errors as ValueError."""
    from snakemake.common.configfile import load_configfile
    from snakemake.exceptions import WorkflowError

    try:
        return load_configfile(str(path))
    except WorkflowError as err:
        raise ValueError(str(err)) from None


def load_config(
    preset: Path = PRESET, configfiles: Sequence[Path] = (), entries: Sequence[str] = ()
) -> dict[str, Any]:
    """The validated configuration with its defaults, or the workflow's errors
    (:class:`~gfmtune.config.ConfigError`, :class:`~gfmtune.models.plugins.PluginError`)."""
    config = merged_config(preset, configfiles, entries)
    load_plugins(config.get("plugins", []))
    return validate_config(config)
