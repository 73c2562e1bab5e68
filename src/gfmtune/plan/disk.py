"""The disk each stage of the plan needs, from the data facts, the checkpoint catalog and the
counted tensor sizes (:class:`~gfmtune.plan.flops.FlopRow`); and the same estimates per workflow
job (:func:`job_disk`), which the rules ask for as their ``disk_mb`` resource."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gfmtune.cells import Cell, percents, timesteps
from gfmtune.data.store import ESTIMATED_RATIO
from gfmtune.models.catalog import facts
from gfmtune.plan import cost
from gfmtune.plan.cost import Build, Job
from gfmtune.plan.data import DataFacts, data_facts
from gfmtune.plan.flop_table import shipped
from gfmtune.plan.flops import FlopKey, FlopRow
from gfmtune.train.settings import TrainSettings

#: Bytes per cached value: fp32, what the cache stores on a CPU and what DINO's levels are
#: under CUDA bf16 autocast (timm keeps its residual stream in fp32); a bf16 cache is half.
CACHE_VALUE_BYTES = 4
#: Manifest lines: ``patch_id,fold`` of a label split, and per frame of a timestep manifest
#: a frame index and a day offset (both estimated, as text).
SPLIT_LINE_BYTES, FRAME_BYTES, LINE_BYTES = 8, 8, 8
#: A job's disk where the plan has no estimate, in MB: Snakemake's own floor (its default
#: ``disk_mb`` is ``max(2 x input MB, 1000)``); profiles/slurm gives it to every other job too.
FLOOR_MB = 1000


@dataclass(frozen=True)
class Stage:
    """Bytes one stage writes (``kept``: False for files deleted when their job ends)."""

    name: str
    bytes: int
    note: str
    kept: bool = True


def manifest_bytes(config: dict[str, Any], data: DataFacts) -> int:
    """Label splits of every split and timestep manifests, as text (an estimate)."""
    splits = 1 + len(config["manifests"]["split_variants"])
    kept = sum(int(data.train * float(p) / 100) for p in percents(config))
    frames = sum(data.patches * (LINE_BYTES + FRAME_BYTES * t) for t in timesteps(config))
    return splits * kept * SPLIT_LINE_BYTES + frames


def cache_bytes(build: Build, row: FlopRow) -> int:
    """A feature cache: its patches x the values it stores per patch x bytes per value."""
    return build.patches * row.cache_values * CACHE_VALUE_BYTES


def stages(
    config: dict[str, Any],
    data: DataFacts,
    jobs: list[Job],
    builds: list[Build],
    rows: dict[FlopKey, FlopRow],
) -> list[Stage]:
    """Download, weights, store, manifests, feature caches, best.pt (kept) and state.pt (one
    per running job, deleted at its end)."""
    checkpoints = {facts(m).checkpoint for m in config["models"]} - {None}
    caches = "; ".join(
        f"{model} t = {', '.join(str(b.key.t) for b in builds if b.key.model == model)}"
        for model in dict.fromkeys(b.key.model for b in builds)
    )
    keep = TrainSettings.from_mapping(config["train"]["settings"]).keep_checkpoint == "best"
    best = sum(rows[job.key].trained_bytes for job in jobs) if keep else 0
    state = max((rows[j.key].trained_bytes + rows[j.key].optimizer_bytes for j in jobs), default=0)
    return [
        Stage("download", data.raw_bytes, f"{data.name}: {data.raw_source}"),
        Stage("weights", sum(c.size for c in checkpoints),
              ", ".join(sorted(c.filename for c in checkpoints)) or "none needed"),
        Stage("store", data.store_bytes, f"raw x {ESTIMATED_RATIO}, as its space check assumes"),
        Stage("manifests", manifest_bytes(config, data), "CSV text, estimated"),
        Stage("feature caches", sum(cache_bytes(b, rows[b.key]) for b in builds),
              f"fp32 (bf16: half): {caches or 'none'}"),
        Stage("best.pt", best, f"{len(jobs)} jobs" if keep else "keep_checkpoint: none"),
        Stage("state.pt", state, "largest, one per running job, deleted at its end", kept=False),
    ]  # fmt: skip


@dataclass(frozen=True)
class JobDisk:
    """Bytes each workflow job writes at most, by the estimates of :func:`stages`: the raw
    data, the store, every manifest, and per training job (its split and cell) its best.pt,
    its state.pt and the feature cache it may build (shared by the jobs of its model and t,
    built by the first). A training job whose FLOP row the shipped table lacks is not here:
    counting it takes seconds (``gfmtune plan`` does). A checkpoint's is its catalog size."""

    download: int
    store: int
    manifests: int
    train: dict[tuple[str, Cell], int]


def job_disk(config: dict[str, Any]) -> JobDisk:
    """The estimates the rules' ``disk_mb`` take (rules/common.smk), from the shipped FLOP
    table only, so that parsing the workflow counts nothing."""
    data = data_facts(config)
    table = shipped()
    keep = TrainSettings.from_mapping(config["train"]["settings"]).keep_checkpoint == "best"
    train = {}
    for job in cost.jobs(config, data):
        row = table.get(job.key)
        if row is None:
            continue
        cache = sum(cache_bytes(b, row) for b in cost.builds([job], data))
        train[job.split, job.cell] = (1 + keep) * row.trained_bytes + row.optimizer_bytes + cache
    return JobDisk(
        download=data.raw_bytes,
        store=data.store_bytes,
        manifests=manifest_bytes(config, data),
        train=train,
    )


def megabytes(n: int) -> int:
    """Bytes as a ``disk_mb`` resource: MB (10^6 bytes, as Snakemake counts), rounded up, at
    least 1."""
    return max(1, math.ceil(n / 1e6))
