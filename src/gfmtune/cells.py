"""The study's grid of training cells, from a validated workflow configuration.

``rules/common.smk`` plans one training job per cell from :func:`training_grid` (and each split
variant's cells from :func:`study_cells`), and ``gfmtune plan`` prices the same cells, so both
read the grid from here. Values are strings as the cell folders write them: FT-Rate ``none``
(a model from scratch) or ``:g`` (``0``, ``0.1``), label fraction ``:g`` (``1``, ``0.5``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from gfmtune.config import ConfigError
from gfmtune.data.manifests import PAPER_BASE_FRAMES
from gfmtune.models.catalog import facts

#: The split every run trains on; ``manifests.split_variants`` name the others.
MAIN_SPLIT = "main"


class Cell(NamedTuple):
    """One training job's grid coordinates, as its folder names them."""

    model: str
    ft_rate: str
    label_percent: str
    timesteps: str
    seed: str


def fmt_percent(percent: float | str) -> str:
    """Label fraction as written in file names: 1, 10, 50, 100, 0.5."""
    return f"{float(percent):g}"


def percents(config: dict[str, Any]) -> list[str]:
    """``manifests.label_percents`` as written in file names."""
    return [fmt_percent(p) for p in config["manifests"]["label_percents"]]


def timesteps(config: dict[str, Any]) -> list[int]:
    """``manifests.timesteps``: the series lengths; with the paper's strategy none above its
    base grid (known from the configuration alone, so refused before any work; a length above
    the data's series is refused when the manifests are written)."""
    chosen = [int(t) for t in config["manifests"]["timesteps"]]
    if config["manifests"]["timestep_strategy"] == "paper":
        for i, t in enumerate(chosen):
            if t > PAPER_BASE_FRAMES:
                raise ConfigError(
                    f"manifests.timesteps[{i}]: {t} exceeds the {PAPER_BASE_FRAMES} frames of "
                    "timestep_strategy 'paper' (frames would repeat); use t <= "
                    f"{PAPER_BASE_FRAMES}, or timestep_strategy 'uniform' or 'random'"
                )
    return chosen


def scarce_percents(key: str, chosen: list[float] | None, allowed: list[str]) -> list[str]:
    """``chosen`` label fractions (as in file names), or those of ``allowed`` of at most 10 %
    when None; a :class:`ConfigError` naming ``key`` when one is not in ``allowed``."""
    if chosen is None:
        return [p for p in allowed if float(p) <= 10]
    picked = [fmt_percent(p) for p in chosen]
    for p in picked:
        if p not in allowed:
            raise ConfigError(f"{key}: {p} is not one of label_percents {allowed}")
    return picked


def variant_percents(config: dict[str, Any]) -> list[str]:
    """The label fractions each split variant trains again (none without variants)."""
    manifests = config["manifests"]
    if not manifests["split_variants"]:
        return []
    key = "manifests.variant_percents"
    return scarce_percents(key, manifests["variant_percents"], percents(config))


def ft_rates(config: dict[str, Any], model: str) -> list[str]:
    """A model's FT-Rates as folders name them: ``none`` for a model trained from scratch."""
    if facts(model).from_scratch:
        return ["none"]
    return [f"{float(ft):g}" for ft in config["train"]["ft_rates"]]


def training_grid(config: dict[str, Any]) -> list[Cell]:
    """The main split's cells, sorted, each once: model x FT-Rate x fraction x frames x seed,
    with ``train.extra_seeds`` at ``train.extra_seed_percents`` only."""
    train, allowed = config["train"], percents(config)
    extra = scarce_percents("train.extra_seed_percents", train["extra_seed_percents"], allowed)
    cells = {
        Cell(model, ft, p, str(t), str(seed))
        for model in config["models"]
        for ft in ft_rates(config, model)
        for p in allowed
        for t in timesteps(config)
        for seed in train["seeds"] + (train["extra_seeds"] if p in extra else [])
    }
    return sorted(cells)


def study_cells(config: dict[str, Any]) -> list[tuple[str, Cell]]:
    """Every training job as (split, cell): the main split's grid, then each variant's cells
    at :func:`variant_percents`."""
    grid, again = training_grid(config), variant_percents(config)
    main = [(MAIN_SPLIT, cell) for cell in grid]
    variants = [
        (split, cell)
        for split in config["manifests"]["split_variants"]
        for cell in grid
        if cell.label_percent in again
    ]
    return main + variants
