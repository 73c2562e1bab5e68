"""``gfmtune gpu-check --out DIR``: what gfmtune does on a GPU machine, in one command sized to
finish in about 8 minutes on one H100/H200 (``--dry``: every part at the smallest sizes on
the CPU, for CI).

Parts, in order of what the first GPU run must tell (each row is written to ``gpu_check.json``
and ``gpu_check.md`` as soon as it is measured, so a run stopped at a time limit keeps what it
did; a row that would start after ``--budget-s`` is recorded as skipped, and a row that fails
records its error while the others go on):

1. ``peak``: the dense bf16 matrix-product rate, the denominator of every MFU;
2. ``bench``: ``gfmtune bench-train``'s default and reference paths per model and regime at
   t = 35 (training step, validation per patch, memory, TFLOP/s, MFU);
3. ``store``, ``loader``, ``cells``: a synthetic store at paper size, what one loader worker
   delivers from it, and one real ``gfmtune train`` cell per model, stopped by SIGTERM and
   resumed (:mod:`gfmtune.bench.cell_check`);
4. ``compile``: ``torch.compile`` off and on for CROMA fine-tuning in bf16 (t = 6);
5. ``bench`` again at t = 6;
6. ``numerics``: what TF32 off (``precision: fp32``) and ``deterministic: true`` cost (DINO);
   ``eval_cache``: frozen CROMA's validation per patch with its window features recomputed
   and read from memory (what ``eval_cache`` could save, before reading them from disk);
7. ``projection``: the 140-cell grid's GPU-hours from the measured steps, each no faster than
   the loader workers deliver its batch, plus job start-up and checkpoint writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch

from gfmtune.bench import grid as gridcost
from gfmtune.bench.cell_check import CellPlan, check_cell, store
from gfmtune.bench.data_path import loader_start, worker_rate
from gfmtune.bench.measure import (
    DEFAULT,
    REFERENCE,
    BenchPath,
    Shape,
    measure_or_oom,
    regimes,
    timed,
)
from gfmtune.data.synthetic import SyntheticSpec
from gfmtune.fileio import atomic_write_text
from gfmtune.models.registry import ModelSpec, build_model, get_spec
from gfmtune.tensorio import save_tensors
from gfmtune.train.loader import MAX_AUTO_WORKERS

log = logging.getLogger(__name__)
JSON, MD = "gpu_check.json", "gpu_check.md"


@dataclass(frozen=True)
class Sizes:
    """How big each part runs: the paper's sizes on a GPU, the smallest on a CPU (``--dry``)."""

    models: tuple[str, ...]
    size: int
    timesteps: tuple[int, ...]  # bench series lengths, in order of importance
    batch: int
    steps: int
    matmul: int
    cells: CellPlan
    compile_backend: str | None  # "eager" on the CPU: inductor's C++ builds take minutes there


def sizes(dry: bool) -> Sizes:
    if dry:
        cells = CellPlan(SyntheticSpec(10, 32, (4, 5), seed=0), t=2, epochs=3, batch=2,
                         cells=(("utae_tiny", None), ("dino_tiny", 0.0), ("croma_tiny", 0.1)),
                         device="cpu", loader_t=(2, 3))  # fmt: skip
        return Sizes(("croma_tiny", "dino_tiny", "utae_tiny"), 32, (2,), 2, 1, 128, cells,
                     "eager")  # fmt: skip
    cells = CellPlan(SyntheticSpec(40, 128, (36, 38), seed=0), t=6, epochs=3, batch=8,
                     cells=(("utae", None), ("dino", 0.0), ("croma", 0.1)), device="auto",
                     loader_t=(6, 35))  # fmt: skip
    return Sizes(("croma", "dino", "utae"), 128, (35, 6), 8, 3, 8192, cells, None)


class Report:
    """The check's rows by part, written out (JSON and Markdown, atomically) after each."""

    def __init__(self, out: Path, header: dict[str, Any], budget_s: float) -> None:
        self.out, self.start, self.budget_s = out, time.monotonic(), budget_s
        self.data: dict[str, Any] = {"header": header, "parts": {}}
        out.mkdir(parents=True, exist_ok=True)

    def time_left(self) -> bool:
        return time.monotonic() - self.start < self.budget_s

    def add(self, part: str, row: dict[str, Any]) -> None:
        row = {"elapsed_s": round(time.monotonic() - self.start, 1), **row}
        self.data["parts"].setdefault(part, []).append(row)
        self.write()

    def skip(self, part: str) -> None:
        self.add(part, {"status": f"skipped: past the {self.budget_s:.0f} s budget"})

    def write(self) -> None:
        text = json.dumps(self.data, indent=1, default=str) + "\n"
        atomic_write_text(self.out / JSON, text)
        atomic_write_text(self.out / MD, markdown(self.data))

    def rows(self, part: str) -> list[dict[str, Any]]:
        return self.data["parts"].get(part, [])

    def attempt(
        self, part: str, measure: Callable[[], dict[str, Any]], **context: object
    ) -> dict[str, Any]:
        """``measure()``'s row, or ``context`` and the error it raised: on a machine never
        tried before, one failing row must not cost the others."""
        try:
            row = measure()
        except Exception as err:  # recorded in the row and the log
            log.exception("gpu-check %s %s: the row failed", part, context)
            row = context | {"status": f"error: {type(err).__name__}: {err}"[:400]}
        self.add(part, row)
        return row


# ---- the parts -------------------------------------------------------------------------------


def matmul_peak(device: torch.device, n: int) -> dict[str, Any]:
    """TFLOP/s of an ``n``^3 product in bf16 on a GPU (fp32 on a CPU), median of 10."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    timed(lambda: a @ b, 3, device)
    seconds = statistics.median(timed(lambda: a @ b, 10, device))
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "tflops": 2 * n**3 / seconds / 1e12}


def bench_rows(report: Report, s: Sizes, device: torch.device, peak: float) -> None:
    """Default and reference rows per model and regime, t in order of importance."""
    for t in s.timesteps:
        for name in s.models:
            spec = get_spec(name)
            for regime in regimes(spec):
                for path in (DEFAULT, REFERENCE):
                    if not report.time_left():
                        return report.skip("bench")
                    shape = Shape(s.batch, t, s.size)
                    measure = partial(_row, spec, regime, shape, path, device, s.steps, peak)
                    row = report.attempt("bench", measure, model=name, regime=regime, t=t,
                                         path=path.name)  # fmt: skip
                    log.info("bench %s %s t=%d %s: %s", name, regime, t, path.name,
                             row.get("step_s", row["status"]))  # fmt: skip
    return None


def _row(spec: ModelSpec, regime: str, shape: Shape, path: BenchPath, device: torch.device,
         steps: int, peak: float) -> dict[str, Any]:  # fmt: skip
    """One bench-train measurement (one warm-up call) with its MFU against ``peak``."""
    row = measure_or_oom(spec, regime, shape, path, device, steps, 1)
    row = {k: v for k, v in row.items() if k not in ("step_all", "val_all")}
    if row.get("train_tflops") is not None:
        row["train_mfu"] = row["train_tflops"] / peak
        row["val_mfu"] = row["val_tflops"] / peak
    return row


def variant_rows(report: Report, part: str, s: Sizes, device: torch.device,
                 model: str, regime: str, t: int, paths: list[BenchPath]) -> None:  # fmt: skip
    """One row per path for one model, regime and t (``compile``, ``numerics``)."""
    spec = get_spec(model)
    for path in paths:
        if not report.time_left():
            return report.skip(part)
        shape, peak = Shape(s.batch, t, s.size), report.rows("peak")[0]["tflops"]
        measure = partial(_row, spec, regime, shape, path, device, s.steps, peak)
        report.attempt(part, measure, model=model, regime=regime, t=t, path=path.name)
    return None


def compile_paths(s: Sizes) -> list[BenchPath]:
    compiled = replace(DEFAULT.settings, compile=True)
    return [DEFAULT, BenchPath("default+compile", compiled, all_blocks=False,
                               compile_backend=s.compile_backend)]  # fmt: skip


def numerics_paths() -> list[BenchPath]:
    fp32 = replace(DEFAULT.settings, precision="fp32")
    return [
        BenchPath("fp32, TF32 on", fp32, all_blocks=False, tf32=True),
        BenchPath("fp32, TF32 off (precision: fp32)", fp32, all_blocks=False),
        DEFAULT,
        BenchPath("default, deterministic: true",
                  replace(DEFAULT.settings, deterministic=True), all_blocks=False),
    ]  # fmt: skip


def _made_store(work: Path, plan: CellPlan) -> dict[str, Any]:
    return {"status": "made", "store": str(store(work, plan, min(8, os.cpu_count() or 1)))}


def eval_cache_paths() -> list[BenchPath]:
    """Frozen CROMA's validation with its window features recomputed (default) and read from
    memory (``eval_cache``): the compute a cache saves, before its read from disk."""
    cached = replace(DEFAULT.settings, eval_cache=True)
    return [DEFAULT, BenchPath("default+eval_cache", cached, all_blocks=False)]


def cell_rows(report: Report, s: Sizes, work: Path) -> None:
    """The synthetic store, a loader worker's rate on it, then one real cell per model."""
    threads = min(8, os.cpu_count() or 1)
    made = report.attempt(
        "store", lambda: {"status": "made", "store": str(store(work, s.cells, threads))}
    )
    if made["status"] != "made":
        return None
    for t in s.cells.loader_t:
        report.attempt("loader", lambda t=t: worker_rate(work / "s2.zarr", t, s.cells.batch, 3))
    for model, ft_rate in s.cells.cells:
        if not report.time_left():
            return report.skip("cells")
        measure = partial(check_cell, work, s.cells, model, ft_rate)
        row = report.attempt("cells", measure, model=model, ft_rate=ft_rate)
        log.info("cell %s ft %s: %s", model, ft_rate, row["status"])
    return None


def checkpoint_bytes(model: str) -> dict[str, int]:
    """Bytes of a cell's ``state.pt`` per regime: trained weights and Adam's two moments."""
    out = {}
    for regime in regimes(get_spec(model)):
        net = build_model(model, encoder_trainable=regime != "frozen")
        trained = sum(p.numel() for p in net.parameters() if p.requires_grad)
        out[regime] = 3 * 4 * trained
    return out


def write_rate(work: Path, mib: int) -> float:
    """Bytes/s of ``save_tensors`` (temporary file, fsync-free rename) for ``mib`` MiB."""
    tensor = torch.zeros(mib * 2**18)  # float32: 4 bytes
    start = time.perf_counter()
    save_tensors({"x": tensor}, work / "write_rate.pt")
    seconds = time.perf_counter() - start
    (work / "write_rate.pt").unlink()
    return tensor.numel() * 4 / seconds


# ---- the projection --------------------------------------------------------------------------


def projection(report: Report, s: Sizes, work: Path) -> dict[str, Any]:
    """The grid's hours on the default path: measured steps, each no faster than
    ``MAX_AUTO_WORKERS`` loader workers deliver its batch, plus per-run start-up (measured
    outside the epochs of the real cells) and ``state.pt`` writes every 10 minutes."""
    rows = [r for r in report.rows("bench") if r.get("path") == "default"]
    if not rows:
        return {"status": "no default rows measured"}
    rates = {r["t"]: r["samples_per_s"] for r in report.rows("loader")}
    bounded = [_loader_bound(r, rates, s.batch) for r in rows]
    loaders = {"default": loader_start(DEFAULT, 3)}
    cost = gridcost.grid([r for r in bounded if r["status"] == "measured"], loaders)
    cells = [c for c in report.rows("cells") if c.get("status") == "ok"]
    startup = statistics.median(c["outside_epochs_s"] for c in cells) if cells else 0.0
    rate = write_rate(work, 256 if s.size > 32 else 4)
    runs = sum(c["runs"] for c in cost["cells"])
    state_bytes = {model: checkpoint_bytes(model) for model in {c["model"] for c in cost["cells"]}}
    writes = sum(_write_seconds(c, state_bytes[c["model"]], rate) for c in cost["cells"])
    steps_h = cost["hours"].get("default")
    total = None if steps_h is None else steps_h + (runs * startup + writes) / 3600
    return {
        "status": "projected" if not cost["incomplete"] else "incomplete",
        "incomplete": cost["incomplete"],
        "steps_hours": steps_h,
        "runs": runs,
        "startup_s_per_run": startup,
        "checkpoint_write_hours": writes / 3600,
        "write_bytes_per_s": rate,
        "loader_workers": MAX_AUTO_WORKERS,
        "loader_samples_per_s_per_worker": rates,
        "loader_bound_rows": [
            f"{r['model']} {r['regime']} t={r['t']}" for r in bounded if r.get("loader_bound")
        ],
        "total_hours": total,
        "measured_t_only": cost["hours_measured_t"].get("default"),
    }


def _loader_bound(row: dict[str, Any], rates: dict[int, float], batch: int) -> dict[str, Any]:
    """``row`` with its step no shorter than the loader workers take to deliver a batch
    (features read from a cache are not bounded by the store's rate)."""
    if row["status"] != "measured" or not rates or row.get("feature_cache"):
        return row
    per_sample = gridcost.at_t({t: 1 / r for t, r in rates.items()}, row["t"])
    floor = batch * per_sample / MAX_AUTO_WORKERS
    return row | {"step_s": max(row["step_s"], floor), "loader_bound": floor > row["step_s"]}


def _write_seconds(cell: dict[str, Any], state_bytes: dict[str, int], rate: float) -> float:
    """``state.pt`` writes of a cell: one per 10 minutes of its runs, and a final best.pt."""
    per_run = cell["seconds"] / cell["runs"]
    writes = math.floor(per_run / 600) + 1
    return cell["runs"] * writes * state_bytes[cell["regime"]] / rate


# ---- output ----------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return "" if value is None else str(value)


COLUMNS = {
    "bench": ("model", "regime", "t", "path", "status", "step_s", "val_patch_s", "train_tflops",
              "train_mfu", "val_mfu", "peak_memory_gib", "precision", "note"),
    "compile": ("model", "regime", "t", "path", "status", "step_s", "first_step_s",
                "train_mfu", "peak_memory_gib"),
    "numerics": ("model", "regime", "t", "path", "status", "step_s", "val_patch_s", "train_mfu"),
    "eval_cache": ("model", "regime", "t", "path", "status", "val_patch_s", "cache_patch_s"),
    "cells": ("model", "ft_rate", "t", "status", "exit_codes", "stopped_by_sigterm", "resume",
              "max_difference", "wall_s", "epochs_s", "outside_epochs_s", "feature_cache",
              "val_resident", "autocast"),
}  # fmt: skip


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...] | None) -> list[str]:
    columns = columns or tuple(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return lines


def markdown(data: dict[str, Any]) -> str:
    head = data["header"]
    lines = [f"# gfmtune gpu-check, {head['date']}", "", _fmt(head["machine"]), ""]
    if head["dry"]:
        lines += ["**Dry run: smallest sizes on the CPU, not a GPU measurement.**", ""]
    for part, rows in data["parts"].items():
        lines += [f"## {part}", "", *_table(rows, COLUMNS.get(part)), ""]
    return "\n".join(lines)


def machine(device: torch.device) -> dict[str, Any]:
    gpu = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if gpu else platform.processor() or "CPU",
        "torch": torch.__version__, "cuda": torch.version.cuda if gpu else None,
        "python": platform.python_version(), "cpus": os.cpu_count(),
    }  # fmt: skip


# ---- command line ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for the .json and .md")
    parser.add_argument("--dry", action="store_true",
                        help="every part at the smallest sizes on the CPU (CI)")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="start no row after this many seconds (default 450)")  # fmt: skip
    parser.add_argument(
        "--work", type=Path, help="folder for the synthetic store and cells (default OUT/work)"
    )


def run(args: argparse.Namespace) -> int:
    if not args.dry and not torch.cuda.is_available():
        raise RuntimeError("gpu-check needs a CUDA GPU (none visible); --dry runs it on the CPU")
    device = torch.device("cpu") if args.dry else torch.device("cuda", 0)
    s = sizes(args.dry)
    header = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "dry": args.dry,
              "machine": machine(device), "argv": sys.argv}  # fmt: skip
    report = Report(args.out, header, args.budget_s)
    work = args.work or args.out / "work"
    peak = matmul_peak(device, s.matmul)
    report.add("peak", peak)
    bench_rows(report, replace(s, timesteps=s.timesteps[:1]), device, peak["tflops"])
    if report.time_left():
        cell_rows(report, s, work)
    croma, dino, last_t = s.models[0], s.models[1], s.timesteps[-1]
    variant_rows(report, "compile", s, device, croma, "finetune", last_t, compile_paths(s))
    bench_rows(report, replace(s, timesteps=s.timesteps[1:]), device, peak["tflops"])
    variant_rows(report, "numerics", s, device, dino, "finetune", last_t, numerics_paths())
    variant_rows(report, "eval_cache", s, device, croma, "frozen", last_t, eval_cache_paths())
    report.attempt("projection", lambda: projection(report, s, work))
    print(markdown(report.data))
    bad = [r for rows in report.data["parts"].values() for r in rows
           if r.get("status") == "FAILED" or str(r.get("status")).startswith("error")]  # fmt: skip
    return 1 if bad else 0
