"""``gfmtune bench-validation --out DIR``: what the validation switches that leave the paper's
protocol (``val_every`` > 1, ``val_patches``) change, measured on the demo's data.

Each demo cell of U-TAE-tiny and frozen DINO-tiny at t = 6 (the demo's store: 100 synthetic
patches of 32 px, its settings) is trained once per variant; a row per cell and variant gives
the epoch of the chosen checkpoint, the test mIoU (paper convention) and the job's seconds, and
the summary counts the cells whose chosen epoch or test score moved against the paper's
protocol (every epoch on the whole fold). Writes ``bench_validation.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from gfmtune.bench.reader import prepare
from gfmtune.data.manifests import write_label_splits
from gfmtune.data.synthetic import SyntheticSpec
from gfmtune.fileio import atomic_write_text
from gfmtune.train.job import Cell, CellJob, Inputs
from gfmtune.train.settings import TrainSettings

log = logging.getLogger(__name__)
DEMO = Path(__file__).parents[3] / "config" / "demo.yaml"
VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {},
    "val_every 4": {"val_every": 4},
    "val_patches 10": {"val_patches": 10},
}
MODELS: tuple[tuple[str, float | None], ...] = (("utae_tiny", None), ("dino_tiny", 0.0))
PERCENTS, TIMESTEPS = ("10", "100"), (6,)


def demo_settings() -> TrainSettings:
    """The demo overlay's training settings."""
    demo = yaml.safe_load(DEMO.read_text())
    return TrainSettings.from_mapping(demo["train"]["settings"])


def demo_store(work: Path) -> Path:
    """The demo's synthetic store (same spec as ``config/demo.yaml``) and its manifests."""
    data = yaml.safe_load(DEMO.read_text())["data"]["synthetic"]
    spec = SyntheticSpec(data["patches"], data["size"], tuple(data["frames_per_tile"]),
                         seed=data["seed"])  # fmt: skip
    store = prepare(work, spec, TIMESTEPS, threads=2)
    write_label_splits(store, work / "label_split", [float(p) for p in PERCENTS], "paper")
    return store


def run_variant(work: Path, cell: Cell, name: str, settings: TrainSettings) -> dict[str, Any]:
    inputs = Inputs(work / "s2.zarr", work / "label_split" / f"{cell.label_percent}.csv",
                    work / "timesteps" / f"{cell.timesteps}.csv",
                    feature_cache=work / "feature_cache")  # fmt: skip
    folder = f"{cell.model}_{cell.label_percent}_{cell.timesteps}"
    out = work / "cells" / name.replace(" ", "_") / folder
    start = time.perf_counter()
    metrics = CellJob(cell, inputs, replace(settings, **VARIANTS[name]), out,
                      progress=False).run()  # fmt: skip
    return {
        "model": cell.model, "label_percent": cell.label_percent, "t": cell.timesteps,
        "variant": name, "best_epoch": metrics["best_epoch"],
        "test_miou_paper": 100 * metrics["test"]["miou_paper"],
        "seconds": time.perf_counter() - start,
    }  # fmt: skip


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: cells whose chosen epoch or test score differ from the paper's protocol."""
    key = ("model", "label_percent", "t")
    paper = {tuple(r[k] for k in key): r for r in rows if r["variant"] == "paper"}
    out = []
    for name in VARIANTS:
        if name == "paper":
            continue
        pairs = [(r, paper[tuple(r[k] for k in key)]) for r in rows if r["variant"] == name]
        moved = [abs(r["test_miou_paper"] - p["test_miou_paper"]) for r, p in pairs]
        out.append({
            "variant": name, "cells": len(pairs),
            "other_epoch": sum(r["best_epoch"] != p["best_epoch"] for r, p in pairs),
            "other_test": sum(m > 0 for m in moved),
            "max_test_change": max(moved, default=0.0),
            "mean_test_change": sum(moved) / len(moved) if moved else 0.0,
            "time_ratio": sum(r["seconds"] for r, _ in pairs) / sum(p["seconds"] for _, p in pairs),
        })  # fmt: skip
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Validation switches on the demo ({result['machine']})", "",
             "| variant | cells | other chosen epoch | other test mIoU | max change (points) |"
             " mean change | job time vs paper |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [
        f"| {s['variant']} | {s['cells']} | {s['other_epoch']} | {s['other_test']} | "
        f"{s['max_test_change']:.2f} | {s['mean_test_change']:.2f} | {s['time_ratio']:.2f}x |"
        for s in result["summary"]
    ]
    lines += ["", "| model | % | t | variant | best epoch | test mIoU | s |", "|---" * 7 + "|"]
    lines += [
        f"| {r['model']} | {r['label_percent']} | {r['t']} | {r['variant']} | {r['best_epoch']} "
        f"| {r['test_miou_paper']:.2f} | {r['seconds']:.1f} |"
        for r in result["rows"]
    ]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for the .md, .json, work")


def demo_work(out: Path, command: str) -> Path:
    """``out/work`` holding the demo's store and manifests, for the bench ``command``."""
    if not DEMO.is_file():
        raise FileNotFoundError(f"{DEMO}: {command} runs from a gfmtune source checkout")
    demo_store(out / "work")
    return out / "work"


def publish(out: Path, stem: str, result: dict[str, Any], text: str) -> None:
    """``out/stem.json`` and ``out/stem.md`` (the table, also printed)."""
    atomic_write_text(out / f"{stem}.json", json.dumps(result, indent=1) + "\n")
    atomic_write_text(out / f"{stem}.md", text)
    print(text)


def run(args: argparse.Namespace) -> int:
    work = demo_work(args.out, "bench-validation")
    # in this process, so with this CPU's kernels (portable numerics need a fresh process)
    settings = replace(demo_settings(), checkpoint_minutes=1e9, cpu_numerics="native")
    rows = [
        run_variant(work, Cell(model, ft, percent, t), name, settings)
        for model, ft in MODELS for percent in PERCENTS for t in TIMESTEPS for name in VARIANTS
    ]  # fmt: skip
    result = {"machine": platform.processor() or "CPU", "rows": rows, "summary": summary(rows)}
    publish(args.out, "bench_validation", result, markdown(result))
    return 0
