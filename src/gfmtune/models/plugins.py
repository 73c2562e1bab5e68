"""Plug-in encoders: modules outside gfmtune that call
:func:`gfmtune.models.registry.register_model` when imported (docs/add-an-encoder.md).

The workflow's ``plugins`` key lists them; ``rules/common.smk`` imports them before validating
the configuration and passes them on to every ``gfmtune`` command in the environment variable
``GFMTUNE_PLUGINS`` (comma-separated), which :func:`gfmtune.cli.main` imports first.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence

#: Environment variable naming the plug-in modules (comma-separated) a command imports.
PLUGINS_ENV = "GFMTUNE_PLUGINS"


class PluginError(ValueError):
    """A plug-in module cannot be imported or registers a model that breaks the contract."""


def load_plugins(modules: Sequence[str]) -> None:
    """Import each module (once: Python caches imports); a :class:`PluginError` naming the
    module and the reason if one cannot be imported."""
    if not isinstance(modules, list | tuple) or not all(isinstance(m, str) for m in modules):
        raise PluginError(f"plugins: expected a list of module names, got {modules!r}")
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise PluginError(
                f"plugins: cannot import {name!r} ({err}); is it installed or on PYTHONPATH?"
            ) from err
        except ValueError as err:  # register_model refused one of its models
            raise PluginError(f"plugins: {name}: {err}") from err


def plugins_from_env() -> list[str]:
    """The module names in ``GFMTUNE_PLUGINS`` (empty when unset)."""
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def export_plugins(modules: Sequence[str]) -> None:
    """Set ``GFMTUNE_PLUGINS`` for the commands this process starts."""
    os.environ[PLUGINS_ENV] = ",".join(modules)
