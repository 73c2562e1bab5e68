"""The plan as text (an aligned table for the terminal) and as a JSON-ready dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from gfmtune.plan.cost import Total
from gfmtune.plan.data import DataFacts
from gfmtune.plan.disk import Stage

GB = 1e9


@dataclass(frozen=True)
class Plan:
    """Everything ``gfmtune plan`` reports."""

    run: str
    data: DataFacts
    jobs: int
    main_jobs: int
    epochs: int
    batch: int
    passes: int
    precision: str  # train.settings.precision
    peak: float  # FLOP/s
    mfu: float
    measured_on: str | None
    totals: list[Total]
    disk: list[Stage]


def _aligned(rows: list[list[str]], right: range) -> list[str]:
    """Rows as columns, those in ``right`` right-aligned, the others left-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in
                  enumerate(zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]  # fmt: skip


#: FLOP units, the largest first: the table uses the largest its total reaches.
UNITS = (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9))


def flop_unit(total: float) -> tuple[str, float]:
    return next(((n, v) for n, v in UNITS if total >= v), UNITS[-1])


def text(plan: Plan) -> str:
    """The report: the grid, FLOPs and GPU-hours per model and regime, and disk per stage."""
    d, mfu = plan.data, f"{plan.mfu:.0%}"
    lines = [
        f"gfmtune plan: run {plan.run}, {plan.jobs} training jobs ({plan.main_jobs} on the main "
        f"split), {d.name} at {d.size} px",
        f"{plan.epochs} epochs at batch {plan.batch}; {plan.passes} validations of {d.val} "
        f"patches and a test of {d.test} per job",
        "",
    ]
    unit, size = flop_unit(plan.totals[-1].flops)
    header = ["model", "regime", "jobs", "cache builds", f"train {unit}", f"eval {unit}",
              f"cache {unit}", "limit h", f"h at {mfu} MFU", "planned h", "measured"]  # fmt: skip
    rows = [header] + [
        [t.model, t.regime, str(t.jobs), str(t.builds), f"{t.train_flops / size:.3g}",
         f"{t.eval_flops / size:.3g}", f"{t.cache_flops / size:.3g}",
         f"{t.hours(plan.peak):.3g}", f"{t.hours(plan.peak, plan.mfu):.3g}",
         f"{t.planned_hours(plan.peak, plan.mfu):.3g}", f"{t.measured}/{t.jobs + t.builds}"]
        for t in plan.totals
    ]  # fmt: skip
    measured = f"measured on {plan.measured_on}" if plan.measured_on else "none given"
    lines += _aligned(rows, range(2, len(header)))
    lines += [
        "",
        f"limit: every FLOP at {plan.peak / 1e12:g} TFLOP/s (100 % of the peak, --peak); "
        f"h at {mfu} MFU: at --mfu {plan.mfu:g} of it;",
        f"planned: measured seconds for the jobs and builds --measured has ({measured}), the "
        f"rest at {mfu} MFU.",
        "FLOPs: torch.utils.flop_counter.FlopCounterMode over the training step and the "
        "evaluation (docs/performance.md).",
        "",
    ]
    if plan.precision == "fp32":
        lines[-1:-1] = ["precision fp32 (no TF32): give the GPU's fp32 rate as --peak."]
    kept = sum(s.bytes for s in plan.disk if s.kept)
    disk = [["disk", "GB", ""]] + [
        [s.name, f"{s.bytes / GB:.3g}", s.note] for s in plan.disk if s.kept
    ]
    disk += [["total", f"{kept / GB:.3g}", "kept after the run"]]
    disk += [[s.name, f"{s.bytes / GB:.3g}", s.note] for s in plan.disk if not s.kept]
    lines += _aligned(disk, range(1, 2))
    return "\n".join(lines) + "\n"


def as_dict(plan: Plan) -> dict[str, Any]:
    """The plan for ``--json``: its settings, one entry per group with hours, disk in bytes."""
    out = asdict(plan)
    out["peak_tflops"] = out.pop("peak") / 1e12
    out["totals"] = [
        asdict(t) | {"flops": t.flops, "limit_h": t.hours(plan.peak),
                     "mfu_h": t.hours(plan.peak, plan.mfu),
                     "planned_h": t.planned_hours(plan.peak, plan.mfu)}
        for t in plan.totals
    ]  # fmt: skip
    out["disk_kept_bytes"] = sum(s.bytes for s in plan.disk if s.kept)
    return out
