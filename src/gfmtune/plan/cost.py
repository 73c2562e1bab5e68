"""The plan's work and device time: each training job's steps and evaluated patches, the
feature-cache builds they share, their FLOPs, and the seconds these take at a peak rate, at a
stated MFU, or as a ``gfmtune bench-train`` run measured them.

A job trains ``epochs x steps_per_epoch`` steps of ``batch_size``, validates at every
``val_every``-th epoch and after the last, and tests once: ``passes x validation patches + test
patches`` evaluated. A frozen encoder whose input is fixed (DINO) trains and evaluates from its
feature cache, one build over every patch per (model, t); CROMA's evaluation windows use one
only with ``eval_cache`` (over the validation and test patches); never with a frame draw.
Measured seconds (the :mod:`gfmtune.bench.grid` cost model) replace the FLOP estimate of the
jobs and builds whose (model, regime, t) the bench measured on the default path at the plan's
batch, patch side and cache use.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gfmtune.bench.grid import STEPS_PER_EPOCH, cell_seconds, loader_starts
from gfmtune.bench.measure import uses_cache, uses_eval_cache
from gfmtune.cells import Cell, study_cells
from gfmtune.models.registry import get_spec
from gfmtune.plan.data import PASTIS, DataFacts
from gfmtune.plan.flops import FlopKey, FlopRow
from gfmtune.train.settings import TrainSettings


@dataclass(frozen=True)
class Job:
    """One training job of the plan and the work it does."""

    split: str
    cell: Cell
    key: FlopKey  # its model, regime, t and what else its FLOPs depend on
    train_steps: int
    batch: int
    eval_patches: int
    cache_kind: str | None  # the feature cache it reads: features | windows | None


@dataclass(frozen=True)
class Build:
    """One feature-cache build, shared by every job of its (model, t)."""

    key: FlopKey
    kind: str
    patches: int


@dataclass(frozen=True)
class Priced:
    """FLOPs and seconds of a job or a build (``measured_s``: None when not measured)."""

    key: FlopKey
    train_flops: float
    eval_flops: float
    cache_flops: float
    measured_s: float | None

    @property
    def flops(self) -> float:
        return self.train_flops + self.eval_flops + self.cache_flops


def regime(cell: Cell) -> str:
    """frozen (FT-Rate 0), finetune (FT-Rate > 0) or scratch (no FT-Rate: U-TAE)."""
    if cell.ft_rate == "none":
        return "scratch"
    return "frozen" if float(cell.ft_rate) == 0 else "finetune"


def steps_per_epoch(percent: str, data: DataFacts, s: TrainSettings, strategy: str) -> int:
    """Training steps per epoch: the paper split's known counts on PASTIS at batch 8
    (:data:`gfmtune.bench.grid.STEPS_PER_EPOCH`: its 1 % holds class top-ups, 2 steps), else
    ``int(train patches x percent / 100)`` patches (at least 1 unless ``paper``) in batches."""
    known = data == PASTIS and strategy == "paper" and s.batch_size == 8 and s.drop_last
    if known and percent in STEPS_PER_EPOCH:
        return STEPS_PER_EPOCH[percent]
    patches = int(data.train * float(percent) / 100)
    patches = patches if strategy == "paper" else max(1, patches)
    return patches // s.batch_size if s.drop_last else math.ceil(patches / s.batch_size)


def val_passes(s: TrainSettings) -> int:
    """Validations of a job: every ``val_every``-th epoch and after the last."""
    return s.epochs // s.val_every + (s.epochs % s.val_every != 0)


def cache_kind(model: str, regime_: str, s: TrainSettings) -> str | None:
    """The feature cache a job of this model and regime reads, as ``gfmtune train`` decides."""
    spec = get_spec(model)
    if s.frame_draw != "none":
        return None
    if uses_cache(spec, regime_, s):
        return "features"
    return "windows" if uses_eval_cache(spec, regime_, s) else None


def _strategy(config: dict[str, Any], split: str) -> str:
    """The label strategy of a split: the run's, or its variant's override."""
    variant = config["manifests"]["split_variants"].get(split, {})
    return variant.get("label_strategy", config["manifests"]["label_strategy"])


def jobs(config: dict[str, Any], data: DataFacts) -> list[Job]:
    """Every training job of the configuration (:func:`gfmtune.cells.study_cells`)."""
    s = TrainSettings.from_mapping(config["train"]["settings"])
    evaluated = val_passes(s) * data.val + data.test
    out = []
    for split, cell in study_cells(config):
        r = regime(cell)
        key = FlopKey(cell.model, r, int(cell.timesteps), data.size, s.temporal,
                      s.activation_checkpointing and r == "finetune")  # fmt: skip
        steps = steps_per_epoch(cell.label_percent, data, s, _strategy(config, split))
        kind = cache_kind(cell.model, r, s)
        out.append(Job(split, cell, key, s.epochs * steps, s.batch_size, evaluated, kind))
    return out


def builds(jobs_: Iterable[Job], data: DataFacts) -> list[Build]:
    """The feature-cache builds the jobs share: one per (model, t, kind), over every patch
    (features) or the validation and test patches (windows)."""
    kinds = {(job.key, job.cache_kind) for job in jobs_ if job.cache_kind}
    return [
        Build(key, kind, data.patches if kind == "features" else data.val + data.test)
        for key, kind in sorted(kinds)
    ]


@dataclass
class Total:
    """FLOPs and hours of a group of jobs and builds (a model and regime, or the plan)."""

    model: str
    regime: str
    jobs: int = 0
    builds: int = 0
    train_flops: float = 0.0
    eval_flops: float = 0.0
    cache_flops: float = 0.0
    measured: int = 0  # jobs and builds whose seconds were measured
    measured_s: float = 0.0
    unmeasured_flops: float = 0.0

    def add(self, item: Priced, job: bool) -> None:
        self.jobs, self.builds = self.jobs + job, self.builds + (not job)
        self.train_flops += item.train_flops
        self.eval_flops += item.eval_flops
        self.cache_flops += item.cache_flops
        if item.measured_s is None:
            self.unmeasured_flops += item.flops
        else:
            self.measured, self.measured_s = self.measured + 1, self.measured_s + item.measured_s

    @property
    def flops(self) -> float:
        return self.train_flops + self.eval_flops + self.cache_flops

    def hours(self, peak: float, mfu: float = 1.0) -> float:
        """GPU-hours of every FLOP at ``mfu`` of ``peak`` FLOP/s (1.0: the limit)."""
        return self.flops / (peak * mfu) / 3600

    def planned_hours(self, peak: float, mfu: float) -> float:
        """Measured seconds where measured, the rest's FLOPs at ``mfu`` of ``peak``."""
        return (self.measured_s + self.unmeasured_flops / (peak * mfu)) / 3600


def totals(jobs_: list[Priced], builds_: list[Priced]) -> list[Total]:
    """One :class:`Total` per (model, regime) in plan order (a build counts to its frozen
    regime), then the plan's (model and regime ``total``)."""
    groups: dict[tuple[str, str], Total] = {}
    plan = Total("total", "")
    for items, job in ((jobs_, True), (builds_, False)):
        for item in items:
            key = (item.key.model, item.key.regime)
            groups.setdefault(key, Total(*key)).add(item, job)
            plan.add(item, job)
    return [*groups.values(), plan]


def price_job(job: Job, row: FlopRow, measured: Measured | None) -> Priced:
    """A job's FLOPs, and its measured seconds where the bench has its row."""
    step = row.cached_train if job.cache_kind == "features" else row.train
    patch = row.cached_eval if job.cache_kind else row.eval
    seconds = measured.job_seconds(job) if measured else None
    return Priced(
        job.key, job.train_steps * job.batch * step, job.eval_patches * patch, 0.0, seconds
    )


def price_build(build: Build, row: FlopRow, measured: Measured | None) -> Priced:
    seconds = measured.build_seconds(build) if measured else None
    return Priced(build.key, 0.0, 0.0, build.patches * row.cache_build, seconds)


class Measured:
    """The default path's rows of a ``bench_train.json`` (``gfmtune bench-train``) that fit
    the plan: same batch and patch side, same feature-cache use."""

    def __init__(self, result: dict[str, Any], batch: int, size: int) -> None:
        config = result["config"]
        fits = config["batch"] == batch and config["size"] == size
        self.device = result["machine"]["device"]
        self.rows = {
            (r["model"], r["regime"], r["t"]): r
            for r in result["rows"]
            if fits and r["path"] == "default" and r["status"] == "measured"
        }
        loader = result.get("loaders", {}).get("default")
        starts = loader_starts("default", loader["persistent"]) if loader else 0
        self.loader = (starts, loader["seconds"] if loader else 0.0)

    @classmethod
    def read(cls, path: Path, batch: int, size: int) -> Measured:
        try:
            return cls(json.loads(Path(path).read_text()), batch, size)
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(
                f"{path}: not a bench_train.json of gfmtune bench-train ({err!r})"
            ) from None

    def _row(self, key: FlopKey, kind: str | None) -> dict[str, Any] | None:
        row = self.rows.get((key.model, key.regime, key.t))
        if row is None or row["feature_cache"] != (kind == "features"):
            return None
        return row if row["eval_cache"] == (kind == "windows") else None

    def job_seconds(self, job: Job) -> float | None:
        row = self._row(job.key, job.cache_kind)
        if row is None:
            return None
        starts, loader_s = self.loader
        return cell_seconds({
            "runs": 1, "train_steps": job.train_steps, "step_s": row["step_s"],
            "eval_patches": job.eval_patches, "val_patch_s": row["val_patch_s"],
            "loader_starts": starts, "loader_s": loader_s,
        })  # fmt: skip

    def build_seconds(self, build: Build) -> float | None:
        row = self._row(build.key, build.kind)
        if row is None or "cache_patch_s" not in row:
            return None
        return build.patches * row["cache_patch_s"]
