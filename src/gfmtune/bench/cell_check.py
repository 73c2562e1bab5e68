"""Real ``gfmtune train`` cells for ``gfmtune gpu-check``: each model trained twice on a
synthetic store, once straight through and once stopped by SIGTERM after its first saved state
and resumed, in subprocesses run exactly as the workflow runs them (``python -m gfmtune train``,
default settings but the epochs and the checkpoint cadence).

A row says what the job did (the log lines of the feature-cache build, the resident validation
fold, the device and precision), its seconds inside and outside the training epochs (start-up,
test and writes), the worker rate of the store's loader, and whether the resumed run's test
metrics equal the uninterrupted run's (exactly, or within ``TOLERANCE``: bf16 kernels on a GPU
need not be bitwise repeatable).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from gfmtune.bench.reader import prepare
from gfmtune.data.manifests import write_label_splits
from gfmtune.data.synthetic import SyntheticSpec
from gfmtune.train.settings import TrainSettings

#: Test metrics of the resumed run may differ from the uninterrupted run's by this much
#: (fractions, as metrics.json holds them) on a GPU; on a CPU they must be equal.
TOLERANCE = 0.005
METRICS = ("miou", "miou_paper", "oa")
#: Log lines that show which of the GPU paths a job took.
EVIDENCE = {
    "feature_cache": "from cached encoder features",
    "val_resident": "validation fold resident",
    "val_not_resident": "validation fold not resident",
    "claimed_gpu": "claimed GPU",
    "autocast": "autocast",
}


@dataclass(frozen=True)
class CellPlan:
    """The synthetic store and the cells: ``cells`` as (model, FT-Rate or None)."""

    spec: SyntheticSpec
    t: int
    epochs: int
    batch: int
    cells: tuple[tuple[str, float | None], ...]
    device: str
    loader_t: tuple[int, ...]  # series lengths at which a loader worker's rate is measured


def store(work: Path, plan: CellPlan, threads: int) -> Path:
    """The plan's synthetic store with its 100 % label split and manifests (``t``, and each
    ``loader_t``)."""
    path = prepare(work, plan.spec, tuple(sorted({plan.t, *plan.loader_t})), threads)
    write_label_splits(path, work / "label_split", [100], "paper")
    return path


def _argv(work: Path, plan: CellPlan, model: str, ft_rate: float | None, out: Path) -> list[str]:
    settings = replace(
        TrainSettings(), epochs=plan.epochs, batch_size=plan.batch, checkpoint_minutes=0
    )
    return [
        sys.executable, "-m", "gfmtune", "train", "--store", str(work / "s2.zarr"),
        "--label-split", str(work / "label_split" / "100.csv"),
        "--timesteps", str(work / "timesteps" / f"{plan.t}.csv"), "--model", model,
        "--ft-rate", "none" if ft_rate is None else str(ft_rate), "--seed", "0",
        "--settings-json", json.dumps(settings.to_dict()), "--device", plan.device,
        "--feature-cache", str(work / "feature_cache"), "--out", str(out), "--no-progress",
    ]  # fmt: skip


def _run(argv: list[str], log: Path, stop_after_state: Path | None = None) -> dict[str, Any]:
    """Run ``argv`` with its output in ``log``; with ``stop_after_state``, send SIGTERM as
    soon as that file exists. Exit code, wall seconds and whether the signal was sent."""
    start, signalled = time.perf_counter(), False
    with log.open("a") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=os.environ)
        while proc.poll() is None:
            if stop_after_state is not None and not signalled and stop_after_state.exists():
                proc.send_signal(signal.SIGTERM)
                signalled = True
            time.sleep(0.02)
    return {"code": proc.returncode, "seconds": time.perf_counter() - start, "signalled": signalled}


def _metrics(cell: Path) -> dict[str, float] | None:
    path = cell / "metrics.json"
    if not path.is_file():
        return None
    test = json.loads(path.read_text())["test"]
    return {k: test[k] for k in METRICS}


def _epoch_seconds(cell: Path) -> float:
    history = cell / "history.csv"
    return float(pd.read_csv(history)["seconds"].sum()) if history.is_file() else float("nan")


def _evidence(log: Path) -> dict[str, bool]:
    text = log.read_text(errors="replace")
    return {name: needle in text for name, needle in EVIDENCE.items()}


def _agreement(straight: dict | None, resumed: dict | None, exact: bool) -> dict[str, Any]:
    if straight is None or resumed is None:
        return {"resume": "no metrics", "max_difference": None}
    diff = max(abs(straight[k] - resumed[k]) for k in METRICS)
    if diff == 0:
        verdict = "equal"
    elif not exact and diff <= TOLERANCE:
        verdict = f"within {TOLERANCE}"
    else:
        verdict = "DIFFERS"
    return {"resume": verdict, "max_difference": diff}


def check_cell(work: Path, plan: CellPlan, model: str, ft_rate: float | None) -> dict[str, Any]:
    """One model's row: the straight run, then the stopped and resumed one."""
    name = f"{model}_ft{ft_rate}"
    straight_dir, resumed_dir = work / "cells" / f"{name}_straight", work / "cells" / f"{name}"
    log = work / "cells" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    straight = _run(_argv(work, plan, model, ft_rate, straight_dir), log)
    stopped = _run(_argv(work, plan, model, ft_rate, resumed_dir), log, resumed_dir / "state.pt")
    resumed = _run(_argv(work, plan, model, ft_rate, resumed_dir), log)
    row: dict[str, Any] = {
        "model": model, "ft_rate": ft_rate, "t": plan.t, "epochs": plan.epochs,
        "exit_codes": [straight["code"], stopped["code"], resumed["code"]],
        "stopped_by_sigterm": stopped["signalled"] and stopped["code"] != 0,
        "wall_s": straight["seconds"], "epochs_s": _epoch_seconds(straight_dir),
        "metrics": _metrics(straight_dir), "log": str(log),
    }  # fmt: skip
    row["outside_epochs_s"] = row["wall_s"] - row["epochs_s"]
    row |= _agreement(row["metrics"], _metrics(resumed_dir), exact=plan.device == "cpu")
    row |= _evidence(log)
    row["status"] = (
        "ok"
        if row["exit_codes"][0] == 0 and row["exit_codes"][2] == 0 and row["stopped_by_sigterm"]
        and row["resume"] != "DIFFERS"
        else "FAILED"
    )  # fmt: skip
    return row
