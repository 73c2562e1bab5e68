"""``gfmtune bench-numerics --out DIR``: what ``cpu_numerics: portable`` costs and whether it
holds, measured side by side on the demo's data.

Each demo cell (U-TAE-tiny, DINO-tiny and CROMA-tiny at FT-Rate 0.1, 100 % of the labels, t = 6;
the demo's store and settings) is trained by ``gfmtune train`` four times, one process each,
with one torch thread: natively and portably, and each again with oneDNN and MKL told to pick
the kernels of an older CPU (``ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2``), as
another machine's libraries would. A portable cell must not move; a native one may. Writes
``bench_numerics.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from gfmtune.bench.validation import demo_settings, demo_work, publish
from gfmtune.data.argsort_orders import cpu_model
from gfmtune.fileio import atomic_write_text
from gfmtune.train.numerics import PORTABLE_ENV

CELLS: tuple[tuple[str, str], ...] = (("utae_tiny", "none"), ("dino_tiny", "0.1"),
                                      ("croma_tiny", "0.1"))  # fmt: skip
PERCENT, T = "100", 6
#: what another CPU's libraries would pick: older ISAs for oneDNN and MKL
OTHER_KERNELS = {"ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}
RUNS: tuple[tuple[str, bool], ...] = (("native", False), ("portable", False),
                                      ("native", True), ("portable", True))  # fmt: skip


def train_cell(work: Path, model: str, ft: str, mode: str, other: bool) -> dict[str, Any]:
    """One ``gfmtune train`` process; its test mIoU (paper convention, %) and wall seconds."""
    name = f"{model}_{mode}{'_other' if other else ''}"
    settings = work / f"{name}.json"
    atomic_write_text(settings, json.dumps(replace(demo_settings(), cpu_numerics=mode).to_dict()))
    out = work / "cells" / name
    argv = [sys.executable, "-m", "gfmtune", "train", "--store", str(work / "s2.zarr"),
            "--label-split", str(work / "label_split" / f"{PERCENT}.csv"),
            "--timesteps", str(work / "timesteps" / f"{T}.csv"), "--model", model,
            "--ft-rate", ft, "--settings", str(settings), "--out", str(out), "--threads", "1",
            "--feature-cache", str(work / "feature_cache" / name), "--no-progress"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
    env |= OTHER_KERNELS if other else {}
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{out}: gfmtune train failed: {done.stderr[-2000:]}")
    test = json.loads((out / "metrics.json").read_text())["test"]
    return {"model": model, "ft_rate": ft, "mode": mode, "other_kernels": other,
            "test_miou_paper": 100 * test["miou_paper"], "seconds": seconds}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    by = {(r["model"], r["mode"], r["other_kernels"]): r for r in result["rows"]}
    lines = [f"# CPU numerics on the demo ({result['machine']}, 1 thread)", "",
             "| cell | native mIoU | native s | portable mIoU | portable s | time ratio |"
             " native, other kernels | portable, other kernels |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for model, ft in CELLS:
        nat, port = by[model, "native", False], by[model, "portable", False]
        nat_o, port_o = by[model, "native", True], by[model, "portable", True]
        lines.append(
            f"| {model} {ft} {PERCENT} % t={T} | {nat['test_miou_paper']:.4f} | "
            f"{nat['seconds']:.1f} | {port['test_miou_paper']:.4f} | {port['seconds']:.1f} | "
            f"{port['seconds'] / nat['seconds']:.2f}x | {nat_o['test_miou_paper']:.4f} | "
            f"{port_o['test_miou_paper']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for the .md, .json, work")


def run(args: argparse.Namespace) -> int:
    work = demo_work(args.out, "bench-numerics")
    rows = [train_cell(work, model, ft, mode, other)
            for model, ft in CELLS for mode, other in RUNS]  # fmt: skip
    result = {"machine": cpu_model()[0], "rows": rows}
    publish(args.out, "bench_numerics", result, markdown(result))
    return 0
