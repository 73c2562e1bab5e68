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
from gfmtune.train.job import MAX_AUTO_WORKERS
from gfmtune.models.catalog import CHECKPOINTS, facts
from gfmtune.models.plugins import PluginError, export_plugins, load_plugins

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


def split_option(split, key):
    """label_strategy, argsort or seed of a label split: main or a variant's override."""
    return VARIANTS.get(split, {}).get(key, MANIFESTS[key])


def split_dir(split):
    """Folder of a label split's manifests: label_split/ (main) or label_split~<variant>/."""
    name = "label_split" if split == "main" else f"label_split~{split}"
    return RUN / "manifests" / name


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


def download_dir():
    return DATA["download_dir"] or str(RUN / "raw" / "pastis")


def download_args():
    """Arguments of `gfmtune download` for the configured source, one list item per argument
    (quoted one by one in the shell command: a value never becomes shell code)."""
    source = DATA["source"]
    args = ["--source", source, "--dest", download_dir()]
    if source == "local":
        if not DATA["root"]:
            raise WorkflowError("data.source is 'local' but data.root is not set in the config")
        args += ["--root", DATA["root"]]
    elif source == "huggingface":
        hf = DATA["huggingface"]
        args += ["--repo-id", hf["repo_id"], "--lock-file", hf["lock_file"]]
        args += ["--revision", hf["revision"]] if hf["revision"] else []
        args += ["--hf-endpoint", hf["endpoint"]] if hf["endpoint"] else []
    elif source == "zenodo":
        zen = DATA["zenodo"]
        args += ["--record", str(zen["record"]), "--zenodo-api", zen["api"]]
        args += ["--files", *zen["files"]] if zen["files"] else []
    else:
        syn = DATA["synthetic"]
        args += ["--patches", str(syn["patches"]), "--size", str(syn["size"]), "--frames"]
        args += [str(f) for f in syn["frames_per_tile"]]
        args += ["--seed", str(syn["seed"])]
    if source in ("huggingface", "zenodo"):
        args += ["--workers", str(DATA["workers"]), "--retries", str(DATA["retries"])]
    return args


def checkpoints():
    """Pretrained checkpoints the configured models need (none for the tiny or U-TAE models)."""
    return sorted({facts(m).checkpoint.name for m in config["models"] if facts(m).checkpoint})


# With weights.offline, the checkpoints must already be there: checked at parse time (so also by
# `snakemake -n`) by size only; the sha256 is checked by the rule when it runs.
def offline_weights_problems(folder):
    """One line per checkpoint the models need that is missing from ``folder`` or has the wrong
    size (path, expected size, found), empty when all are there."""
    problems = []
    for name in checkpoints():
        ckpt = CHECKPOINTS[name]
        path = Path(folder) / ckpt.filename
        found = f"{path.stat().st_size:,} bytes" if path.is_file() else "none"
        if found != f"{ckpt.size:,} bytes":
            problems.append(f"  {path}: expected {ckpt.size:,} bytes, found {found}")
    return problems


def check_offline_weights(folder):
    """Stop the workflow with one error naming every missing or wrong-size checkpoint and the
    prefetch command."""
    problems = offline_weights_problems(folder)
    if problems:
        raise WorkflowError(
            f"weights.offline is true but {len(problems)} checkpoint(s) in {folder} are missing "
            "or of the wrong size:\n" + "\n".join(problems) + "\nFetch each on a machine with "
            "internet (gfmtune weights --checkpoint NAME --dir DIR --stamp NAME.json, NAME one of "
            f"{', '.join(checkpoints())}) and copy it into {folder}; its sha256 is verified when "
            "the weights rule runs."
        )


if config["weights"]["offline"]:
    check_offline_weights(config["weights"]["dir"])


CELLS = Paramspace(pd.DataFrame(GRID, columns=Cell._fields), filename_params=None)


def weights_stamp(wildcards):
    ckpt = facts(wildcards.model).checkpoint
    return [RUN / "weights" / f"{ckpt.name}.json"] if ckpt else []


def weights_args(wildcards):
    """``--weights-dir DIR`` for a model with a pretrained checkpoint, as separate arguments."""
    return ["--weights-dir", config["weights"]["dir"]] if weights_stamp(wildcards) else []


def train_threads():
    """CPUs of a training job: with workers auto, the cores of this machine shared by the
    training jobs that run at once (--resources gpu=N: cores // N), at most the 15 workers of
    gfmtune.train.job.MAX_AUTO_WORKERS and the main process; with a number of workers, that
    number and one. SLURM's profile sets its own (set-threads)."""
    workers = config["train"]["settings"].get("workers", "auto")
    if workers != "auto":
        return int(workers) + 1
    gpus = workflow.global_resources.get("gpu")
    share = workflow.cores // max(1, int(getattr(gpus, "value", gpus) or 1))
    return max(1, min(MAX_AUTO_WORKERS + 1, share))


def train_runtime(wildcards, attempt):
    """Time limit in minutes of a training job (SLURM -t): `train.runtime` is a CROMA cell's
    at 35 frames. Scaled by the model (its catalog runtime, relative to CROMA's: the step costs
    behind the GPU-time estimate in docs/reproduce.md, with margin), by the frames
    (0.2 + 0.8 t / 35: a fifth does not grow with t) and by the attempt (a retry after a
    time-out gets twice the limit, and resumes from its last finished epoch)."""
    import math

    model = facts(wildcards.model).runtime
    frames = 0.2 + 0.8 * int(wildcards.timesteps) / 35
    return math.ceil(config["train"]["runtime"] * model * frames * attempt)


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


def maps_cells(wildcards):
    """The cells' metrics for predict_maps, or the reason maps cannot be made."""
    if not MAPS:
        raise WorkflowError(
            "predict_maps needs each cell's best.pt, but train.settings.keep_checkpoint is none; "
            "set it to best to make prediction maps"
        )
    return cell_metrics()


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
