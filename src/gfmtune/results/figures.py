"""Figures: mIoU against the number of frames (published curves dashed), heatmaps of mIoU
over (FT-Rate, frames) per model and label fraction, mIoU against FT-Rate, and mIoU against
cost with its Pareto front. PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
from matplotlib.transforms import Bbox

from gfmtune.results.cost import pareto_front
from gfmtune.results.tables import ft_text, row_label, row_order

COLORS = {"CROMA": "tab:blue", "DINO": "tab:orange", "U-TAE": "tab:green"}
STYLES = {0.0: ":", 0.1: "-.", 1.0: "-", -1.0: "-"}
#: The paper's dashed rows: a marker per FT-Rate tells them apart (U-TAE: -1).
PAPER_MARKERS = {0.0: "v", 0.1: "^", 1.0: "s", -1.0: "x"}


def save_figure(fig: Figure, base: Path, note: str = "") -> list[Path]:
    """The figure as PNG and PDF, ``note`` (what its numbers cannot say) above it."""
    if note:
        fig.suptitle(note, fontsize=9, color="firebrick")
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_suffix(".png"), base.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


def miou_vs_frames(
    ours: pd.DataFrame,
    paper: pd.DataFrame | None,
    fractions: list[float],
    base: Path,
    note: str = "",
) -> list[Path]:
    """One panel per label fraction: ours solid with error bars, the paper's dashed. Error bars:
    the 95 % interval (``low``, ``high`` in ``ours``) where a cell has one, else std over seeds."""
    fig = Figure(figsize=(5.5 * len(fractions), 5.4), layout="constrained")
    axes = fig.subplots(1, len(fractions), squeeze=False)
    for ax, fraction in zip(axes[0], fractions, strict=True):
        for model, ft in row_order(ours):
            mine = ours[
                (ours.model == model) & (ours.ft_rate == ft) & (ours.label_percent == fraction)
            ].sort_values("timesteps")
            color = COLORS.get(model, "gray")
            if len(mine):
                ax.errorbar(
                    mine.timesteps,
                    mine["mean"],
                    yerr=_error_bars(mine),
                    color=color,
                    ls=STYLES.get(ft, "-"),
                    marker="o",
                    ms=3,
                    capsize=2,
                    label=row_label(model, ft),
                )
            if paper is not None:
                theirs = paper[
                    (paper.model == model)
                    & (paper.ft_rate == ft)
                    & (paper.label_percent == fraction)
                ].sort_values("timesteps")
                if len(theirs):
                    ax.plot(
                        theirs.timesteps,
                        theirs["mean"],
                        color=color,
                        ls="--",
                        marker=PAPER_MARKERS.get(ft, "x"),
                        ms=3,
                        alpha=0.45,
                        lw=1,
                        label=f"paper: {row_label(model, ft)}",
                    )
        ax.set(
            title=f"{fraction:g} % of the labels",
            xlabel="frames per series",
            ylabel="test mIoU (%, paper convention)",
        )
        ax.grid(alpha=0.3)
    title = "this run (bars: 95 % interval); dashed: the paper's row of that name"
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=6, title=title,
               title_fontsize=7)  # fmt: skip
    return save_figure(fig, base, note)


def _error_bars(cells: pd.DataFrame) -> np.ndarray:
    """(2, n) distances below and above each mean: its interval, else its std, else 0."""
    std = cells["std"].fillna(0).to_numpy()
    if "low" not in cells:
        return np.stack([std, std])
    below = (cells["mean"] - cells["low"]).to_numpy()
    above = (cells["high"] - cells["mean"]).to_numpy()
    has = ~np.isnan(below)
    return np.stack([np.where(has, below, std), np.where(has, above, std)]).clip(min=0)


def heatmaps(ours: pd.DataFrame, base: Path, note: str = "") -> list[Path]:
    """Per foundation model (rows) and label fraction (columns): mIoU over FT-Rate x frames
    (:func:`heatmaps_figure`)."""
    return save_figure(heatmaps_figure(ours), base, note)


def heatmaps_figure(ours: pd.DataFrame) -> Figure:
    """The heatmaps of :func:`heatmaps`. One colour scale for every panel, from the smallest to
    the largest value shown: U-TAE has no FT-Rate axis and no panel, so its mIoU (often far
    above the GFMs') does not stretch the scale; the colour bar says so. Each value is written
    in its cell, dark on light colours and light on dark."""
    gfms = [m for m in ("CROMA", "DINO") if m in set(ours.model)]
    fractions = sorted(ours.label_percent.unique(), reverse=True)
    if not gfms:  # the rule declares the figure: say why it is empty
        fig = Figure(figsize=(5, 1.5))
        fig.text(0.5, 0.5, "no CROMA or DINO cells in this run: no FT-Rate axis to show",
                 ha="center", va="center")  # fmt: skip
        return fig
    shown = ours[ours.model.isin(gfms)]
    vmin, vmax = float(np.nanmin(shown["mean"])), float(np.nanmax(shown["mean"]))
    fig = Figure(figsize=(3.4 * len(fractions), 2.8 * len(gfms)), layout="constrained")
    axes = fig.subplots(len(gfms), len(fractions), squeeze=False)
    for i, model in enumerate(gfms):
        for j, fraction in enumerate(fractions):
            part = shown[(shown.model == model) & (shown.label_percent == fraction)]
            grid = part.pivot(index="ft_rate", columns="timesteps", values="mean")
            ax = axes[i][j]
            image = ax.imshow(
                grid.to_numpy(), vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto", origin="lower"
            )
            ax.set_xticks(range(grid.shape[1]), [str(t) for t in grid.columns])
            ax.set_yticks(range(grid.shape[0]), [ft_text(f) for f in grid.index])
            for (r, c), v in np.ndenumerate(grid.to_numpy()):
                if np.isfinite(v):
                    ax.text(c, r, f"{v:.1f}", ha="center", va="center", fontsize=7,
                            color=_text_color(image.cmap(image.norm(v))))  # fmt: skip
            ax.set_title(f"{model}, {fraction:g} %", fontsize=9)
            ax.set_xlabel("frames", fontsize=8)
            ax.set_ylabel("FT-Rate", fontsize=8)
    others = sorted(set(ours.model) - set(gfms))
    left_out = f"; {', '.join(others)} not shown" if others else ""
    label = (
        f"test mIoU (%), one scale for all panels:\n{vmin:.1f} to {vmax:.1f}, "
        f"the values shown{left_out}"
    )
    fig.colorbar(image, ax=axes, shrink=0.8, label=label)
    return fig


def _text_color(rgba: tuple[float, ...]) -> str:
    """Black on a light colour, white on a dark one (relative luminance)."""
    luminance = 0.2126 * rgba[0] + 0.7152 * rgba[1] + 0.0722 * rgba[2]
    return "black" if luminance > 0.45 else "white"


def _symlog(ax, rates: list[float]) -> None:
    """x axis symlog, linear up to the smallest positive FT-Rate so that 0 shows; ticks at the
    FT-Rates."""
    positive = [f for f in rates if f > 0]
    ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0, linscale=0.5)
    ax.set_xticks(rates, [ft_text(f) for f in rates], fontsize=7)
    ax.minorticks_off()


def miou_vs_ftrate(curves: pd.DataFrame, base: Path, note: str = "") -> list[Path]:
    """One panel per label fraction: each foundation model's mIoU averaged over frames against
    FT-Rate (symlog x axis, 0 shown), U-TAE's as a dotted horizontal line; error bars the 95 %
    interval of that average where every cell has one (:func:`gfmtune.results.ftrate.curves`)."""
    fractions = sorted(curves.label_percent.unique(), reverse=True)
    rates = sorted(f for f in curves.ft_rate.unique() if f >= 0)
    fig = Figure(figsize=(3.6 * len(fractions), 3.6), layout="constrained")
    axes = fig.subplots(1, len(fractions), squeeze=False, sharey=True)[0]
    for ax, fraction in zip(axes, fractions, strict=True):
        part = curves[curves.label_percent == fraction].sort_values("ft_rate")
        for model, line in part.groupby("model"):
            color = COLORS.get(model, "gray")
            if (line.ft_rate < 0).all():
                ax.axhline(line["mean"].iloc[0], color=color, ls=":", label=model)
                continue
            ax.errorbar(line.ft_rate, line["mean"], yerr=_error_bars(line.assign(std=np.nan)),
                        color=color, marker="o", ms=3, capsize=2, label=model)  # fmt: skip
        _symlog(ax, rates)
        ax.set(title=f"{fraction:g} % of the labels", xlabel="FT-Rate (symlog axis)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test mIoU (%, paper convention),\nmean over frames")
    handles, labels = axes[0].get_legend_handles_labels()
    title = "bars: 95 % interval; U-TAE (no FT-Rate) dotted"
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=7,
               title=title, title_fontsize=7)  # fmt: skip
    return save_figure(fig, base, note)


def cost_pareto(points: pd.DataFrame, unit: str, base: Path, note: str = "") -> list[Path]:
    """mIoU against compute and trainable parameters with the Pareto front
    (:func:`cost_pareto_figure`)."""
    return save_figure(cost_pareto_figure(points, unit), base, note)


def cost_pareto_figure(points: pd.DataFrame, unit: str) -> Figure:
    """mIoU against compute (``hours``, in ``unit``) and against ``trainable`` parameters, one
    panel per fraction and axis, one point per (model, FT-Rate) labelled with its FT-Rate, the
    Pareto front (most mIoU for no more cost) as a grey step line that runs on to the right
    edge, its points ringed. Tick labels and point labels are placed so that none overlaps
    another (checked on the laid-out figure)."""
    fractions = sorted(points.label_percent.unique(), reverse=True)
    axes_of = (("hours", unit), ("trainable", "trainable parameters"))
    fig = Figure(figsize=(3.6 * len(fractions), 6.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(fractions), squeeze=False, sharey="col")
    labels = []
    for row, (column, label) in enumerate(axes_of):
        for ax, fraction in zip(axes[row], fractions, strict=True):
            part = points[(points.label_percent == fraction) & points[column].notna()]
            labels.append((ax, _pareto_panel(ax, part, column, label)))
            ax.set_title(f"{fraction:g} % of the labels", fontsize=9)
            ax.set_ylabel("test mIoU (%), mean over frames", fontsize=8)
    handles = [Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in COLORS.items()
               if m in set(points.model)]  # fmt: skip
    handles.append(Line2D([], [], color="gray", ls="-", marker="o", mfc="none", ms=7,
                          label="Pareto front (ringed)"))  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7,
               title="labels: FT-Rate; cost per training run, mean over frames",
               title_fontsize=7)  # fmt: skip
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()  # lays the figure out, then again with the ticks chosen
    for ax, _ in labels:
        _readable_ticks(ax, renderer)
    fig.draw_without_rendering()  # the places below are final: point labels stay out of it
    for ax, texts in labels:
        _place_labels(ax, texts, renderer)
    return fig


def _pareto_panel(ax, part: pd.DataFrame, column: str, label: str) -> list[tuple]:
    """Points of one panel and its front; says so when there are none. Returns the point
    labels to place: (x, y, FT-Rate text)."""
    if part.empty:
        ax.text(0.5, 0.5, "no values (parameters: gfmtune results --params)", ha="center",
                va="center", fontsize=7, transform=ax.transAxes)  # fmt: skip
        return []
    texts = []
    for r in part.itertuples():
        x = getattr(r, column)
        ax.plot(x, r.miou, "o", color=COLORS.get(r.model, "gray"), ms=4)
        if r.ft_rate >= 0:
            texts.append((x, r.miou, ft_text(r.ft_rate)))
    cost, value = part[column].to_numpy(), part.miou.to_numpy()
    front = pareto_front(cost, value)
    log = bool((cost > 0).all())
    if log:
        ax.set_xscale("log")
    ax.autoscale_view()
    right = ax.get_xlim()[1]
    # the front holds up to any cost: on to the right edge, so that one point shows it too
    xs, ys = np.append(cost[front], right), np.append(value[front], value[front][-1])
    ax.step(xs, ys, where="post", color="gray", lw=1, zorder=0)
    ax.plot(cost[front], value[front], "o", mfc="none", mec="gray", ms=7, zorder=0)
    ax.set_xlim(right=right)
    ax.set_xlabel(f"{label} (log axis)" if log else label, fontsize=8)
    ax.grid(alpha=0.3)
    return texts


def _si(value: float, _=None) -> str:
    """A tick label: 3e+04 as 30k, 1.2e+06 as 1.2M, small numbers as ``:g`` writes them."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:g}{suffix}"
    return f"{value:g}"


def _visible_ticklabels(ax) -> list:
    low, high = sorted(ax.get_xlim())
    return [
        t
        for t, x in zip(ax.xaxis.get_majorticklabels(), ax.xaxis.get_majorticklocs(), strict=True)
        if low <= x <= high and t.get_text()
    ]


def _overlap(boxes: list) -> bool:
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])


#: Major x ticks of a log axis, densest first: mantissas of every decade, then every n-th decade.
TICK_CHOICES = (((1, 2, 3, 4, 5, 6, 7, 8, 9), 1), ((1, 2, 3, 5), 1), ((1, 2, 5), 1), ((1, 3), 1),
                ((1,), 1), ((1,), 2), ((1,), 3), ((1,), 5))  # fmt: skip


def _log_ticks(low: float, high: float, mantissas: tuple[int, ...], every: int) -> list[float]:
    """m x 10^k within [low, high] for m in ``mantissas`` and every ``every``-th k."""
    decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    ticks = [m * 10.0**k for k in decades if k % every == 0 for m in mantissas]
    return [t for t in ticks if low <= t <= high]


def _readable_ticks(ax, renderer) -> None:
    """Major x ticks of a log axis from the densest of :data:`TICK_CHOICES` that shows two
    ticks at least with no label overlapping another (else the densest with one), labelled
    compactly (30k, 1.2M, 0.005); minor ticks unlabelled."""
    if ax.get_xscale() != "log":
        return
    low, high = sorted(ax.get_xlim())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(_si))
    fallback = None
    for mantissas, every in TICK_CHOICES:
        ticks = _log_ticks(low, high, mantissas, every)
        if not ticks:
            continue
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        boxes = [t.get_window_extent(renderer) for t in _visible_ticklabels(ax)]
        if not _overlap(boxes):
            if len(ticks) > 1:
                return
            fallback = fallback or ticks
    # at most one tick fits: the one found, else the axis' middle (geometric)
    ax.xaxis.set_major_locator(FixedLocator(fallback or [float(np.sqrt(low * high))]))


#: Where a point's label may go, in points from the point: right, above, left, below.
LABEL_OFFSETS = ((4, 1, "left", "bottom"), (4, -1, "left", "top"), (-4, 1, "right", "bottom"),
                 (-4, -1, "right", "top"), (0, 4, "center", "bottom"), (0, -4, "center", "top"),
                 (8, 6, "left", "bottom"), (-8, -6, "right", "top"))  # fmt: skip


def _place_labels(ax, texts: list[tuple], renderer) -> None:
    """Each label at the first of :data:`LABEL_OFFSETS` where it overlaps no placed label and
    no point and stays inside the axes; else beside its point, at the first offset."""
    scale = renderer.points_to_pixels(1.0)
    points = [ax.transData.transform((x, y)) for x, y, _ in texts]
    placed = [Bbox.from_bounds(px - 2.5 * scale, py - 2.5 * scale, 5 * scale, 5 * scale)
              for px, py in points]  # fmt: skip
    frame = ax.get_window_extent(renderer)
    for x, y, label in texts:
        for dx, dy, ha, va in LABEL_OFFSETS:
            note = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points",
                               fontsize=6, ha=ha, va=va)  # fmt: skip
            note.set_in_layout(False)
            box = note.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
            if inside and box.y1 <= frame.y1 and not any(box.overlaps(b) for b in placed):
                break
            note.remove()
        else:
            dx, dy, ha, va = LABEL_OFFSETS[0]
            note = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points",
                               fontsize=6, ha=ha, va=va)  # fmt: skip
            note.set_in_layout(False)
            box = note.get_window_extent(renderer)
        placed.append(box)
