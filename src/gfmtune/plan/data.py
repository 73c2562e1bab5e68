"""What the configured data source holds, as far as the plan needs it: patches per fold, the
patch side and the bytes of the raw series, for PASTIS-HD (published facts) or for the
synthetic generator (from its settings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gfmtune import pastis
from gfmtune.bench.grid import TEST_PATCHES, VAL_PATCHES
from gfmtune.data.manifests import PAPER_N_TRAIN
from gfmtune.data.store import ESTIMATED_RATIO

#: PASTIS-HD's Sentinel-2 series and labels as fetched (``metadata.geojson``,
#: ``NORM_S2_patch.json``, ``DATA_S2/``, ``ANNOTATIONS/``): about 35 GB (docs/data.md).
PASTIS_RAW_BYTES = 35 * 10**9
PASTIS_SIZE = 128
#: Bytes of one frame's value per band and pixel (int16) and of a label pixel (PASTIS's
#: targets: 3 channels, 1 byte each in the generator's common case).
VALUE_BYTES, LABEL_BYTES = 2, 3


@dataclass(frozen=True)
class DataFacts:
    """Patches per fold (1-5), patch side in px and raw bytes of one data source."""

    name: str
    folds: tuple[int, int, int, int, int]
    size: int
    raw_bytes: int
    raw_source: str  # where raw_bytes comes from

    @property
    def train(self) -> int:
        return sum(self.folds[f - 1] for f in pastis.TRAIN_FOLDS)

    @property
    def val(self) -> int:
        return self.folds[pastis.VAL_FOLD - 1]

    @property
    def test(self) -> int:
        return self.folds[pastis.TEST_FOLD - 1]

    @property
    def patches(self) -> int:
        return sum(self.folds)

    @property
    def store_bytes(self) -> int:
        """The Zarr store's bytes as the conversion's free-space check assumes them."""
        return round(self.raw_bytes * ESTIMATED_RATIO)


#: PASTIS: 1,455 training patches (folds 1-3); folds 4 and 5 share the other 978, taken as 489
#: each (as :mod:`gfmtune.bench.grid` does: the study does not publish the per-fold counts).
_TRAIN_PER_FOLD, _REST = divmod(PAPER_N_TRAIN, 3)
PASTIS = DataFacts(
    "PASTIS-HD (S2)",
    (_TRAIN_PER_FOLD + _REST, _TRAIN_PER_FOLD, _TRAIN_PER_FOLD, VAL_PATCHES, TEST_PATCHES),
    PASTIS_SIZE,
    PASTIS_RAW_BYTES,
    "about 35 GB as fetched (docs/data.md)",
)


def synthetic_facts(spec: dict[str, Any]) -> DataFacts:
    """The generator's dataset (``data.synthetic``): patch i in fold (i mod 5) + 1 before the
    shuffle, on tile i mod tiles, whose series has that tile's frame count."""
    n, size, frames = spec["patches"], spec["size"], spec["frames_per_tile"]
    folds = tuple(len(range(f, n, 5)) for f in range(5))
    series = sum(frames[i % len(frames)] for i in range(n)) * len(pastis.BANDS) * VALUE_BYTES
    raw = (series + n * LABEL_BYTES) * size * size
    return DataFacts("synthetic", folds, size, raw, "data.synthetic: int16 series, 3-byte labels")


def data_facts(config: dict[str, Any]) -> DataFacts:
    """The facts of ``data.source``: the synthetic generator's, else PASTIS-HD's."""
    data = config["data"]
    return synthetic_facts(data["synthetic"]) if data["source"] == "synthetic" else PASTIS
