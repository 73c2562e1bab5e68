"""The results figures as drawn: the heatmaps' colour scale spans the values shown."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gfmtune.results import figures


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
