"""The results figures as drawn: the heatmaps' colour scale spans the values shown, and the cost
figure's labels do not overlap and its Pareto front shows on every panel."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.lines import Line2D

from gfmtune.results import figures
from gfmtune.results.cost import pareto_front

#: The dpi save_figure writes the PNG at: the geometry is checked as the file shows it.
DPI = 150


def _summary() -> pd.DataFrame:
    """Per-cell means as tables.summarize gives them: the GFMs between 3 and 31 % and U-TAE
    far above them (70 %), as in the demo."""
    rows, rng = [], np.random.default_rng(0)
    for p in (100, 10):
        for t in (1, 6, 15):
            for model in ("CROMA", "DINO"):
                for ft in (0.0, 0.1, 1.0):
                    rows.append((model, ft, p, t, rng.uniform(3, 31)))
            rows.append(("U-TAE", -1.0, p, t, 70.0))
    frame = pd.DataFrame(rows, columns=["model", "ft_rate", "label_percent", "timesteps", "mean"])
    return frame.assign(std=np.nan, n=1)


def test_heatmap_colours_span_the_values_shown() -> None:
    ours = _summary()
    fig = figures.heatmaps_figure(ours)
    shown = ours[ours.model != "U-TAE"]["mean"]
    images = [image for ax in fig.axes for image in ax.get_images()]
    assert len(images) == 4  # CROMA and DINO at two fractions; U-TAE has no FT-Rate axis
    for image in images:
        assert image.norm.vmax == pytest.approx(shown.max())
        assert image.norm.vmin == pytest.approx(shown.min())
    (colorbar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    label = colorbar.get_ylabel()
    assert f"{shown.min():.1f} to {shown.max():.1f}" in label, label
    assert "the values shown" in label and "U-TAE not shown" in label
    # each value readable on its colour: dark text on the brightest cell, light on the darkest
    texts = {t.get_text(): t.get_color() for ax in fig.axes for t in ax.texts}
    assert texts[f"{shown.max():.1f}"] == "black" and texts[f"{shown.min():.1f}"] == "white"


def _points() -> pd.DataFrame:
    """Cost points as cost_points gives them: FT-Rates 0.1 and 1.0 train the same parameters
    for about the same hours (their labels would fall on each other), the hours span less
    than a decade (a log axis labels its minor ticks then), and U-TAE is the cheapest and the
    best (a front of one point)."""
    rows = []
    for p, shift in ((100, 0.0), (10, 0.4)):
        for model, tr0, trp, hours, mious in (
            ("CROMA", 20_000, 120_000, 0.004, (17.8, 8.6, 9.1)),
            ("DINO", 25_000, 400_000, 0.006, (25.7, 18.7, 19.0)),
        ):
            for ft, miou in zip((0.0, 0.1, 1.0), mious, strict=True):
                cost = hours * (1.3 if ft else 1.0) * (1 + ft / 50)
                rows.append((model, ft, p, miou + shift, cost, tr0 if ft == 0 else trp))
        rows.append(("U-TAE", -1.0, p, 60.0, 0.003, 15_000))
    columns = ["model", "ft_rate", "label_percent", "miou", "hours", "trainable"]
    return pd.DataFrame(rows, columns=columns)


def _drawn(fig):
    fig.set_dpi(DPI)
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _tick_labels(ax) -> list:
    """The x tick labels drawn: major and minor, inside the axis, with text."""
    low, high = sorted(ax.get_xlim())
    shown = []
    for minor in (False, True):
        labels = ax.xaxis.get_ticklabels(minor=minor)
        locations = ax.xaxis.get_ticklocs(minor=minor)
        shown += [label for label, x in zip(labels, locations, strict=True)
                  if low <= x <= high and label.get_text() and label.get_visible()]  # fmt: skip
    return shown


def _overlapping(texts, renderer) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [
        (a, b)
        for i, (a, box_a) in enumerate(boxes)
        for b, box_b in boxes[i + 1 :]
        if box_a.overlaps(box_b)
    ]


def test_cost_figure_labels_do_not_overlap() -> None:
    fig = figures.cost_pareto_figure(_points(), "CPU-hours")
    renderer = _drawn(fig)
    panels = [ax for ax in fig.axes if ax.get_xscale() == "log"]
    assert len(panels) == 4
    for ax in panels:
        ticks = _tick_labels(ax)
        assert ticks, f"no tick label on {ax.get_xlabel()}"
        assert not _overlapping(ticks, renderer), ax.get_xlabel()
        notes = ax.texts
        assert sorted(t.get_text() for t in notes) == ["0.0", "0.0", "0.1", "0.1", "1.0", "1.0"]
        assert not _overlapping(notes, renderer), (ax.get_title(), ax.get_xlabel())
        frame = ax.get_window_extent(renderer)
        for note in notes:  # inside the panel, where nothing else is drawn
            box = note.get_window_extent(renderer)
            assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 <= frame.y1


def test_cost_figure_draws_the_pareto_front_on_every_panel() -> None:
    points = _points()
    fig = figures.cost_pareto_figure(points, "CPU-hours")
    _drawn(fig)
    panels = [ax for ax in fig.axes if ax.get_xscale() == "log"]
    for ax in panels:
        column = "hours" if "hours" in ax.get_xlabel() else "trainable"
        fraction = float(ax.get_title().split(" %")[0])
        part = points[points.label_percent == fraction]
        cost, value = part[column].to_numpy(), part.miou.to_numpy()
        front = pareto_front(cost, value)
        steps = [line for line in ax.get_lines() if line.get_drawstyle() == "steps-post"]
        assert len(steps) == 1, ax.get_xlabel()
        xs, ys = steps[0].get_data()
        assert len(xs) >= 2  # a front of one point still shows, as a line to the right edge
        assert xs[-1] == pytest.approx(ax.get_xlim()[1])
        assert list(xs[:-1]) == pytest.approx(cost[front].tolist())
        assert list(ys[:-1]) == pytest.approx(value[front].tolist())
        rings = [line for line in ax.get_lines() if isinstance(line, Line2D)
                 and line.get_marker() == "o" and line.get_markerfacecolor() == "none"]  # fmt: skip
        assert rings and list(rings[0].get_xdata()) == pytest.approx(cost[front].tolist())
    # U-TAE alone is the hours panels' front: one point, drawn as a line all the same
    assert len(pareto_front(points.hours.to_numpy()[:7], points.miou.to_numpy()[:7])) == 1
