# Configuration validation, result paths and helpers shared by every rule file.
from pathlib import Path

import json
import os
import sys

import pandas as pd
from snakemake.exceptions import WorkflowError
from snakemake.utils import Paramspace

from gfmtune.cells import (
    Cell,
    percents,
    study_cells,
    timesteps,
    training_grid,
    variant_percents,
)
from gfmtune.config import ConfigError, validate_config
from gfmtune.models.catalog import CHECKPOINTS, facts
from gfmtune.models.plugins import PluginError, export_plugins, load_plugins
from gfmtune.plan.disk import FLOOR_MB, job_disk, megabytes

# Plug-in modules first (they register models; every gfmtune command of the run imports them
# too, from GFMTUNE_PLUGINS). Then against src/gfmtune/resources/config.schema.yaml, filling its
# defaults (not in train.settings); a bad key ends the run with one line naming it, its value and
# what is allowed.
try:
    load_plugins(config.get("plugins", []))
    export_plugins(config.get("plugins", []))
    validate_config(config)
except (ConfigError, PluginError) as err:
    raise WorkflowError(str(err)) from None

RUN = Path("results") / config["run"]
DATA = config["data"]
MANIFESTS = config["manifests"]
CONDA_ENV = "../envs/gfmtune.yaml"
# Where that env and its post-deploy script find the lock and this project: Snakemake copies
# them to its conda prefix before conda's pip runs them (docs/install.md, "conda").
os.environ.update(GFMTUNE_WORKFLOW=workflow.basedir)  # set here, not read: no envvars directive


#: Label fractions as file names write them, series lengths, label-split variants and the
#: fractions each variant trains again, and the grid's cells (gfmtune.cells, which
#: `gfmtune plan` prices too); a bad fraction list ends the run with one line.
try:
    PERCENTS = percents(config)
    TIMESTEPS = timesteps(config)
    VARIANTS = MANIFESTS["split_variants"]
    VARIANT_PERCENTS = variant_percents(config)
    GRID = training_grid(config)
    STUDY_CELLS = study_cells(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

#: What each job writes at most, as `gfmtune plan` estimates it (gfmtune.plan.disk.job_disk):
#: the rules' disk_mb, known when the workflow is parsed, so that a dry run shows a number.
DISK = job_disk(config)


def split_option(split, key):
    """label_strategy, argsort or seed of a label split: main or a variant's override."""
    return VARIANTS.get(split, {}).get(key, MANIFESTS[key])


def split_dir(split):
    """Folder of a label split's manifests: label_split/ (main) or label_split~<variant>/."""
    name = "label_split" if split == "main" else f"label_split~{split}"
    return RUN / "manifests" / name


#: The data a run trained on, as every report entry's ``data`` label says it.
DATA_LABEL = (
    "synthetic (embedded generator, not PASTIS-HD)"
    if DATA["source"] == "synthetic"
    else f"PASTIS-HD ({DATA['source']})"
)


def report_labels(output):
    """``labels=`` of a report entry: ``output``, its file name and what it shows (unique in
    its section: the report lists entries by their labels), then the run's data (the same
    for every entry: the report makes a toggle of a later label with two values, each on half
    a section's entries, and the toggle hides entries)."""
    return {"output": output, "data": DATA_LABEL}


#: A number as file names write it (Python's ``:g``): 1, 0.5, 1e-05.
NUMBER = r"\d+(\.\d+)?(e[-+]\d+)?"


wildcard_constraints:
    t=r"\d+",
    ckpt=r"[a-z0-9_]+",
    model=r"[a-z0-9_]+",
    ft_rate=rf"none|{NUMBER}",
    label_percent=NUMBER,
    timesteps=r"\d+",
    seed=r"\d+",
    split=r"[a-z0-9_]+",


def checkpoints():
    """Pretrained checkpoints the configured models need (none for the tiny or U-TAE models)."""
    return sorted({facts(m).checkpoint.name for m in config["models"] if facts(m).checkpoint})


CELLS = Paramspace(pd.DataFrame(GRID, columns=Cell._fields), filename_params=None)


def cell_metrics():
    """Every cell's metrics.json: the grid on the main split, then each variant's cells (the
    grid's cells at VARIANT_PERCENTS) under cells/split~<variant>/."""
    instance = dict(zip(GRID, CELLS.instance_patterns, strict=True))
    return [
        RUN / "cells" / ("" if split == "main" else f"split~{split}") / instance[cell]
        / "metrics.json"
        for split, cell in STUDY_CELLS
    ]


#: Prediction maps need each cell's best.pt: none with keep_checkpoint none, so no maps then.
MAPS = config["train"]["settings"].get("keep_checkpoint", "best") != "none"
if not MAPS:
    print(
        "train.settings.keep_checkpoint is none: no cell keeps best.pt, so the run makes no "
        "prediction maps (maps/, figures/predictions.png)",
        file=sys.stderr,
    )


def all_targets():
    maps = [RUN / "maps", RUN / "figures" / "predictions.png"] if MAPS else []
    return [
        RUN / "tables" / "miou.csv",
        *maps,
        RUN / "tables" / "params.csv",
        RUN / "tables" / "params_paper.csv",
        RUN / "figures" / "training_curves.png",
        RUN / "config.yaml",
        *cell_metrics(),
        *[RUN / "weights" / f"{name}.json" for name in checkpoints()],
        RUN / "data" / "s2.zarr",
        *[RUN / "manifests" / "label_split" / f"{p}.csv" for p in PERCENTS],
        RUN / "manifests" / "label_split" / "summary.csv",
        *[split_dir(split) / "summary.csv" for split in VARIANTS],
        *[RUN / "manifests" / "timesteps" / f"{t}.csv" for t in TIMESTEPS],
    ]
