"""``gfmtune bench-train``: training and validation speed of gfmtune's default path against the
authors' way (the reference path), side by side in one process, and the paper grid's device
time for both.

For each model, regime (frozen: FT-Rate 0; fine-tuned: FT-Rate 0.1; U-TAE: from scratch) and
series length, on synthetic tensors of PASTIS's shapes (batch, t frames, 10 bands, size px):
the median training step of ``--steps`` timed steps after ``--warmup``, validation seconds per
patch, frames/s, peak GPU memory and achieved TFLOP/s from counted FLOPs (see
:mod:`gfmtune.bench.measure`), and the start-up of the DataLoader workers
(:mod:`gfmtune.bench.data_path`). Writes ``bench_train.md`` and ``bench_train.json`` to
``--out``: the rows, the ratios default / reference and the grid's hours
(:mod:`gfmtune.bench.grid`). ``--components`` also measures the reference with each of its
choices switched, one at a time, to the default's. On a CPU it runs
the tiny models at 32 px by default and says so: its numbers are not a GPU estimate.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from gfmtune.bench import grid as gridcost
from gfmtune.bench.data_path import data_path, loader_start
from gfmtune.bench.measure import COMPONENTS, PATHS, Shape, changes, measure_or_oom, regimes
from gfmtune.fileio import atomic_write_text
from gfmtune.models.registry import REGISTRY, get_spec
from gfmtune.train.devices import device_name, select_device

log = logging.getLogger(__name__)

GPU_MODELS, CPU_MODELS = ("croma", "dino", "utae"), ("croma_tiny", "dino_tiny", "utae_tiny")
TIMESTEPS = (6, 35)
PAPER_SIZE, CPU_SIZE = 128, 32
#: Row quantities compared as default / reference.
RATIO_KEYS = ("step_s", "val_patch_s", "frames_per_s", "peak_memory_gib", "train_tflops")
MD, JSON = "bench_train.md", "bench_train.json"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _over_reference(
    rows: list[dict[str, Any]], paths: set[str], keys: tuple[str, ...]
) -> list[dict[str, Any]]:
    """For each row of ``paths``: its cell, path and ``keys`` divided by the reference row's."""
    reference = {(r["model"], r["regime"], r["t"]): r for r in rows if r["path"] == "reference"}
    out = []
    for row in rows:
        if row["path"] in paths:
            ref = reference[(row["model"], row["regime"], row["t"])]
            entry = {k: row[k] for k in ("model", "regime", "t", "path")}
            out.append(entry | {k: _ratio(row.get(k), ref.get(k)) for k in keys})
    return out


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """default / reference of each quantity, per (model, regime, t); None where one is missing."""
    return _over_reference(rows, {"default"}, RATIO_KEYS)


def components(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ``--components`` row's step and validation time over the reference's."""
    paths = {r["path"] for r in rows} - {"default", "reference"}
    return _over_reference(rows, paths, ("step_s", "val_patch_s"))


def _num(value: float | None, fmt: str = ".4g") -> str:
    return "n/a" if value is None else format(value, fmt)


def _header(result: dict[str, Any]) -> list[str]:
    cfg, machine = result["config"], result["machine"]
    lines = [
        "# gfmtune bench-train",
        "",
        f"{result['date']} · {machine['device']} · torch {machine['torch']} · "
        f"{machine['cpus']} CPUs, torch threads: {machine['threads']}",
        "",
    ]
    if machine["device_type"] != "cuda":
        lines += ["**CPU, reduced sizes: not a GPU estimate.**", ""]
    if cfg["reduced"]:
        lines += [
            f"Reduced sizes: models {', '.join(cfg['models'])} at {cfg['size']} px, "
            f"t = {', '.join(map(str, cfg['timesteps']))} (the paper: {', '.join(GPU_MODELS)} "
            f"at {PAPER_SIZE} px, t = {' and '.join(map(str, TIMESTEPS))}).",
            "",
        ]
    lines += [
        f"Batch {cfg['batch']}, 10 bands, synthetic tensors already on the device (data loading "
        "not timed; cached features held in memory, the cache's file reads not timed); median "
        f"of {cfg['steps']} timed calls after {cfg['warmup']} warm-up (spread: (max - min) / "
        "median of the timed steps). Paths: **default** = "
        "`gfmtune train` with its default settings (precision auto: bf16 autocast on CUDA, fp32 "
        "on CPU; CROMA stopped after its last used block; frozen encoders with a fixed input "
        "train from cached features; its evaluation batch and workers); **reference** = the "
        "authors' way (fp32, every CROMA block computed, frozen encoder recomputed every step, "
        "validation batch 1, workers started every epoch). FT-Rate > 0 measured at 0.1.",
        "",
        "FLOPs: counted by `torch.utils.flop_counter.FlopCounterMode` over one call (matrix "
        "products, convolutions, attention; forward and backward as run; 2 FLOPs per "
        "multiply-add); TFLOP/s = counted FLOPs / median seconds. Peak memory: CUDA "
        "`max_memory_allocated` over the training steps (n/a on CPU).",
    ]
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The report: header, measured rows, ratios, loader start-up and grid hours."""
    lines = [*_header(result), "", "## Measured", ""]
    lines += [
        "| model | regime | t | path | step s | spread | frames/s | peak GiB | train TFLOP/s | "
        "val s/patch | val TFLOP/s | cache s/patch | notes |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        if r["status"] != "measured":
            lines.append(f"| {r['model']} | {r['regime']} | {r['t']} | {r['path']} | "
                         f"{r['status']} |  |  |  |  |  |  |  |  |")  # fmt: skip
            continue
        notes = ", ".join(
            n for n in (r["precision"], f"eval batch {r['eval_batch']}", r["note"],
                        r["memory_plan"]) if n
        )  # fmt: skip
        cells = [
            _num(r["step_s"]), f"{r['step_spread']:.0%}", _num(r["frames_per_s"], ".4g"),
            _num(r["peak_memory_gib"], ".2f"), _num(r["train_tflops"], ".3g"),
            _num(r["val_patch_s"]), _num(r["val_tflops"], ".3g"), _num(r.get("cache_patch_s")),
        ]  # fmt: skip
        lines.append(f"| {r['model']} | {r['regime']} | {r['t']} | {r['path']} | "
                     f"{' | '.join(cells)} | {notes} |")  # fmt: skip
    lines += [
        "",
        "## Ratios default / reference",
        "",
        "Times below 1: the default path is faster; frames/s and TFLOP/s above 1: it does more.",
        "",
        "| model | regime | t | step s | val s/patch | frames/s | peak memory | TFLOP/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for q in result["ratios"]:
        cells = [_num(q[k], ".3g") for k in RATIO_KEYS]
        lines.append(f"| {q['model']} | {q['regime']} | {q['t']} | {' | '.join(cells)} |")
    if result["components"]:
        lines += [
            "",
            "## Components: the reference with one choice switched to the default's, / reference",
            "",
            "| model | regime | t | switched | step s | val s/patch |",
            "|---|---|---:|---|---:|---:|",
        ]
        for c in result["components"]:
            switched = c["path"].removeprefix("reference+")
            ratios_ = f"{_num(c['step_s'], '.3g')} | {_num(c['val_patch_s'], '.3g')}"
            lines.append(f"| {c['model']} | {c['regime']} | {c['t']} | {switched} | {ratios_} |")
    lines += ["", "## DataLoader start-up", ""]
    for path, loader in result["loaders"].items():
        starts = gridcost.loader_starts(path, loader["persistent"])
        lines.append(
            f"- {path}: {loader['workers']} workers, {loader['seconds']:.3f} s to start, drain and "
            f"stop one loader; {starts} starts per run ({gridcost.EPOCHS} epochs)"
        )
    lines += [*_data_lines(result), *_grid_lines(result), ""]
    return "\n".join(lines)


def _data_lines(result: dict[str, Any]) -> list[str]:
    """What the default path's steps consume against what one loader worker delivers, and the
    epochs of a loader whose workers are kept or restarted."""
    d = result["data_path"]
    rate = {r["t"]: r for r in d["rates"]}
    lines = [
        "",
        "## Data path: samples/s consumed (default path) and delivered per loader worker",
        "",
        f"One DataLoader worker reading a synthetic Zarr store ({d['size']} px, batch "
        f"{d['batch']}), epochs after its first (no start-up): int16 frames as `gfmtune train` "
        "sends them, and float32 normalised in the worker. Workers needed = consumed / "
        "delivered per worker, rounded up.",
        "",
        "| model | regime | t | training consumes | validation consumes | one worker delivers "
        "(int16) | float32 | workers needed (training, validation) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        if r["path"] != "default" or r["status"] != "measured":
            continue
        train, val = result["config"]["batch"] / r["step_s"], 1 / r["val_patch_s"]
        worker = rate[r["t"]]
        need = ", ".join(str(math.ceil(c / worker["samples_per_s"])) for c in (train, val))
        lines.append(
            f"| {r['model']} | {r['regime']} | {r['t']} | {train:.4g} | {val:.4g} | "
            f"{worker['samples_per_s']:.4g} | {worker['float32_samples_per_s']:.4g} | {need} |"
        )
    reuse = d["reuse"]
    kept, restarted = reuse["kept"], reuse["restarted"]
    later = [statistics.mean(e[1:]) for e in (kept, restarted)]
    lines += [
        "",
        f"Worker reuse at {reuse['steps_per_epoch']} steps per epoch (t = {reuse['t']}, "
        f"{reuse['workers']} workers, {len(kept)} epochs): kept alive {_secs(kept)}, "
        f"started every epoch {_secs(restarted)}; epochs after the first: "
        f"{_num(_ratio(later[0], later[1]), '.3g')} x the time with workers restarted "
        f"({later[1] - later[0]:.3f} s less per epoch).",
    ]
    if "cache_read" in d:
        c = d["cache_read"]
        cache, store = c["cache"], c["store"]
        lines += [
            "",
            f"Feature cache read (t = {c['t']}, {c['workers']} workers, {c['patches']} patches, "
            f"frozen DINO's paper-size levels in bf16, {cache['bytes_per_sample'] / 1e6:.3g} MB "
            f"per sample): {cache['samples_per_s']:.4g} samples/s, against "
            f"{store['samples_per_s']:.4g} from the Zarr store ({d['size']} px, "
            f"{store['bytes_per_sample'] / 1e6:.3g} MB per sample int16): "
            f"{_num(c['ratio'], '.3g')} x.",
        ]
    return lines


def _secs(seconds: list[float]) -> str:
    return " / ".join(f"{s:.3f}" for s in seconds) + " s"


def _grid_lines(result: dict[str, Any]) -> list[str]:
    g, a = result["grid"], result["grid"]["assumptions"]
    label = (
        "CPU, reduced sizes: not a GPU estimate"
        if result["machine"]["device_type"] != "cuda"
        else "GPU-hours" + (", reduced sizes" if result["config"]["reduced"] else "")
    )
    lines = [
        "",
        f"## Paper grid ({label})",
        "",
        f"{a['epochs']} epochs; training steps per epoch "
        f"{'/'.join(str(v) for v in a['steps_per_epoch'].values())} at "
        f"{'/'.join(a['steps_per_epoch'])} % of the labels; validation of {a['val_patches']} "
        f"patches (fold 4) every epoch and test of {a['test_patches']} (fold 5) once (folds 4 "
        f"and 5 hold 978 patches together, taken as {a['val_patches']} each); t = "
        f"{', '.join(map(str, a['grid_t']))}, those not measured interpolated linearly in t "
        "(scaled in proportion to t outside the measured range); FT-Rates 0.1 and 1.0 are two "
        f"runs; a cached frozen encoder adds one feature pass over all {a['all_patches']} "
        "patches per (model, t).",
        "",
        "| model | regime | default h | reference h | default / reference |",
        "|---|---|---:|---:|---:|",
    ]
    for (model, regime), hours in _hours_by_model(g).items():
        d, r = hours.get("default"), hours.get("reference")
        lines.append(
            f"| {model} | {regime} | {_num(d)} | {_num(r)} | {_num(_ratio(d, r), '.3g')} |"
        )
    for key, what in (("hours", "whole grid"), ("hours_measured_t", "measured t only")):
        d, r = g[key].get("default"), g[key].get("reference")
        ratio = _num(_ratio(d, r), ".3g")
        lines.append(f"| **{what}** |  | **{_num(d)}** | **{_num(r)}** | **{ratio}** |")
    if g["incomplete"]:
        lines += ["", f"Out of memory, so not in the totals: {', '.join(g['incomplete'])}."]
    return lines


def _hours_by_model(g: dict[str, Any]) -> dict[tuple[str, str], dict[str, float]]:
    out: dict[tuple[str, str], dict[str, float]] = {}
    for c in g["cells"]:
        slot = out.setdefault((c["model"], c["regime"]), {})
        slot[c["path"]] = slot.get(c["path"], 0.0) + c["seconds"] / 3600
    for b in g["cache_builds"]:
        slot = out.setdefault((b["model"], "frozen"), {})
        slot[b["path"]] = slot.get(b["path"], 0.0) + b["seconds"] / 3600
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--models", nargs="+", help=f"default: {' '.join(GPU_MODELS)} on CUDA, "
        f"{' '.join(CPU_MODELS)} on CPU",
    )  # fmt: skip
    parser.add_argument(
        "--timesteps", type=int, nargs="+", default=list(TIMESTEPS), help="frames per series"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (>= 1)")
    parser.add_argument(
        "--device", default="auto", type=device_name, help="auto | cpu | cuda | cuda:N"
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the .md and .json")
    parser.add_argument(
        "--size",
        type=int,
        help=f"patch side in px (default {PAPER_SIZE} on CUDA, {CPU_SIZE} on CPU)",
    )
    parser.add_argument("--batch", type=int, default=8, help="training batch")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all)")
    parser.add_argument(
        "--components",
        action="store_true",
        help="also measure the reference with each of its choices switched to the default's, "
        "and the feature cache's read rate against the Zarr store's",
    )


def run(args: argparse.Namespace) -> int:
    device = select_device(args.device)
    gpu = device.type == "cuda"
    models = args.models or list(GPU_MODELS if gpu else CPU_MODELS)
    unknown = [m for m in models if m not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {', '.join(sorted(REGISTRY))}")
    size = args.size or (PAPER_SIZE if gpu else CPU_SIZE)
    for name in models:
        policy = get_spec(name).policy
        if policy.kind == "crop_windows" and size < policy.size:
            raise ValueError(f"{name} crops {policy.size} px: --size {size} is too small")
    if args.steps < 1 or args.warmup < 1 or min(args.timesteps) < 1:
        raise ValueError("--steps, --warmup (FLOPs are counted on a warm-up call) and "
                         "--timesteps must be >= 1")  # fmt: skip
    if args.batch < 2:
        raise ValueError("--batch must be >= 2 (BatchNorm in training needs two samples)")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = {
        "models": models, "timesteps": args.timesteps, "steps": args.steps,
        "warmup": args.warmup, "size": size, "batch": args.batch,
        "reduced": not gpu or size != PAPER_SIZE or sorted(args.timesteps) != list(TIMESTEPS)
        or any(m not in GPU_MODELS for m in models),
    }  # fmt: skip
    rows = []
    for name in models:
        spec = get_spec(name)
        for regime in regimes(spec):
            for t in args.timesteps:
                extra = [
                    c for c in COMPONENTS if args.components and changes(c, spec, regime, device)
                ]
                for path in [*PATHS, *extra]:
                    shape = Shape(args.batch, t, size)
                    row = measure_or_oom(spec, regime, shape, path, device, args.steps, args.warmup)
                    log.info(
                        "%s %s t=%d %s: step %s s, validation %s s/patch",
                        name, regime, t, path.name, _num(row.get("step_s")),
                        _num(row.get("val_patch_s")),
                    )  # fmt: skip
                    rows.append(row)
    loaders = {p.name: loader_start(p, min(args.steps, 3)) for p in PATHS}
    data = data_path(
        args.out / "loader_store", size, args.timesteps, args.batch, cache=args.components
    )
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "device": torch.cuda.get_device_name(device) if gpu else platform.processor() or "CPU",
            "device_type": device.type, "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "config": config,
        "rows": rows,
        "ratios": ratios(rows),
        "loaders": loaders,
        "data_path": data,
        "components": components(rows),
        "grid": gridcost.grid([r for r in rows if r["path"] in loaders], loaders),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    atomic_write_text(args.out / MD, text)
    atomic_write_text(args.out / JSON, json.dumps(result, indent=1) + "\n")
    print(text)
    return 0
