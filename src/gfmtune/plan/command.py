"""``gfmtune plan``: the configured grid's FLOPs, GPU-hours and disk per stage, before a run.

Reads the configuration as ``snakemake`` does (``workflow_config.yaml``, then ``--configfile``
overlays, then ``--config`` entries) and stops with the workflow's one-line errors. Prints per
model and regime and in total the training, evaluation and feature-cache FLOPs, the GPU-hours
at 100 % of ``--peak`` (the limit) and at ``--mfu`` of it, and the planned hours, in which a
``gfmtune bench-train`` JSON (``--measured``) replaces the estimate of the rows it measured;
then the disk of each stage. ``--json`` also writes it all for machines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gfmtune.cells import MAIN_SPLIT
from gfmtune.fileio import atomic_write_text
from gfmtune.plan import cost, disk, report
from gfmtune.plan.data import data_facts
from gfmtune.plan.flop_table import flop_rows
from gfmtune.plan.load import PRESET, load_config
from gfmtune.train.settings import TrainSettings

#: H100 SXM's dense bf16 matrix-product rate as measured (issue 20), FLOP/s.
PEAK_TFLOPS = 800.0
MFU = 0.35


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--configfile", type=Path, nargs="+", action="extend", default=[],
        help="overlays on the preset, merged in order as snakemake --configfile merges them",
    )  # fmt: skip
    parser.add_argument(
        "--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help="overrides, parsed and merged as snakemake --config parses them",
    )  # fmt: skip
    parser.add_argument(
        "--preset", type=Path, default=PRESET,
        help=f"the preset the Snakefile loads first (default {PRESET})",
    )  # fmt: skip
    parser.add_argument(
        "--peak", type=float, default=PEAK_TFLOPS,
        help=f"the GPU's peak rate in TFLOP/s (default {PEAK_TFLOPS:g}: an H100's measured "
        "dense bf16 matrix products)",
    )  # fmt: skip
    parser.add_argument(
        "--mfu", type=float, default=MFU,
        help=f"model FLOP utilisation to plan with, a fraction of the peak (default {MFU:g})",
    )  # fmt: skip
    parser.add_argument(
        "--measured", type=Path,
        help="bench_train.json of gfmtune bench-train: its measured step and validation "
        "times replace the FLOP estimate of the rows it has",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the plan as JSON to this file")
    parser.add_argument(
        "--recount", action="store_true",
        help="count every FLOP row now (seconds each) instead of reading the shipped table",
    )  # fmt: skip


def build(args: argparse.Namespace) -> report.Plan:
    """The plan of the configuration the arguments name."""
    if args.peak <= 0 or not 0 < args.mfu <= 1:
        raise ValueError("--peak must be > 0 and --mfu in (0, 1]")
    config = load_config(args.preset, args.configfile, args.config)
    data = data_facts(config)
    s = TrainSettings.from_mapping(config["train"]["settings"])
    jobs = cost.jobs(config, data)
    builds = cost.builds(jobs, data)
    rows = flop_rows({job.key for job in jobs}, args.recount)
    measured = cost.Measured.read(args.measured, s.batch_size, data.size) if args.measured else None
    return report.Plan(
        run=config["run"],
        data=data,
        jobs=len(jobs),
        main_jobs=sum(job.split == MAIN_SPLIT for job in jobs),
        epochs=s.epochs,
        batch=s.batch_size,
        passes=cost.val_passes(s),
        precision=s.precision,
        peak=args.peak * 1e12,
        mfu=args.mfu,
        measured_on=measured.device if measured else None,
        totals=cost.totals(
            [cost.price_job(job, rows[job.key], measured) for job in jobs],
            [cost.price_build(b, rows[b.key], measured) for b in builds],
        ),
        disk=disk.stages(config, data, jobs, builds, rows),
    )


def run(args: argparse.Namespace) -> int:
    plan = build(args)
    print(report.text(plan), end="")
    if args.json:
        atomic_write_text(args.json, json.dumps(report.as_dict(plan), indent=1) + "\n")
    return 0
