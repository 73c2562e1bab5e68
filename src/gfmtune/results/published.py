"""The published mIoU values (paper convention: mean over 20 classes with void, in percent).

Source: Castiglioni, Isla, Calderon, Castillo-Navarro, Lefèvre, Barriere, *Shaping Fine-Tuning
of Geospatial Foundation Models: Effects of Label Availability and Temporal Resolution*, ICML
2025 TerraBytes workshop; all 140 values of its two mIoU tables, in
``resources/published_miou.csv`` (model, ft_rate, label_percent, timesteps, miou).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

CITATION = (
    "Castiglioni et al., Shaping Fine-Tuning of Geospatial Foundation Models: Effects of Label "
    "Availability and Temporal Resolution, ICML 2025 TerraBytes workshop"
)


def published() -> pd.DataFrame:
    """One row per cell: model, ft_rate (NaN for U-TAE), label_percent, timesteps, miou (%)."""
    with resources.files("gfmtune.resources").joinpath("published_miou.csv").open() as f:
        return pd.read_csv(f)
