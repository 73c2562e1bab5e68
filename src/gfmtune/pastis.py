"""Facts about the PASTIS(-HD) Sentinel-2 data and readers for its on-disk layout.

Layout (Garnot et al., PASTIS; IGNF PASTIS-HD)::

    metadata.geojson            one feature per patch: ID_PATCH, Fold, TILE, dates-S2, ...
    NORM_S2_patch.json          {"Fold_1": {"mean": [10], "std": [10]}, ...}
    DATA_S2/S2_{ID_PATCH}.npy   (T, 10, H, W) int16, L2A reflectance x 10000, -10000 = nodata
    ANNOTATIONS/TARGET_{ID}.npy (3, H, W); channel 0 = semantic class 0..19 (dtype varies)
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

BANDS: tuple[str, ...] = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
CLASS_NAMES: tuple[str, ...] = (
    "Background", "Meadow", "Soft winter wheat", "Corn", "Winter barley", "Winter rapeseed",
    "Spring barley", "Sunflower", "Grapevine", "Beet", "Winter triticale", "Winter durum wheat",
    "Fruits, vegetables, flowers", "Potatoes", "Leguminous fodder", "Soybeans", "Orchard",
    "Mixed cereal", "Sorghum", "Void label",
)  # fmt: skip
N_CLASSES = len(CLASS_NAMES)
VOID_CLASS = 19
NODATA = -10000
REFERENCE_DATE = date(2018, 9, 1)
TRAIN_FOLDS: tuple[int, ...] = (1, 2, 3)
VAL_FOLD = 4
TEST_FOLD = 5

#: Per-band normalisation the paper uses (B2..B12): docs/protocol.md, "Normalisation and band
#: adaptation".
PAPER_MEAN: tuple[float, ...] = (
    1161.6764, 1371.4307, 1423.4067, 1759.7251, 2714.5259,
    3055.8376, 3197.8960, 3313.3577, 2415.9675, 1626.8431,
)  # fmt: skip
PAPER_STD: tuple[float, ...] = (
    2045.0698, 1983.1763, 2060.7969, 1968.8173, 1867.2159,
    1885.1361, 1897.5105, 1885.1636, 1542.7665, 1375.2511,
)  # fmt: skip

METADATA_FILE = "metadata.geojson"
NORM_FILE = "NORM_S2_patch.json"


class PastisFormatError(ValueError):
    """A PASTIS file does not have the expected content; the message names the file."""


def s2_path(root: Path, patch_id: int) -> Path:
    return Path(root) / "DATA_S2" / f"S2_{patch_id}.npy"


def target_path(root: Path, patch_id: int) -> Path:
    return Path(root) / "ANNOTATIONS" / f"TARGET_{patch_id}.npy"


def find_dataset_root(path: Path) -> Path:
    """Return the folder holding ``metadata.geojson`` at or below ``path`` (archives nest it).

    Several PASTIS folders below ``path`` are an error listing them: which one is meant is not
    for the directory order to decide.
    """
    path = Path(path)
    if (path / METADATA_FILE).is_file():
        return path
    found = sorted(p.parent for p in path.rglob(METADATA_FILE))
    if not found:
        raise PastisFormatError(f"{path}: no {METADATA_FILE} found in this folder or below")
    if len(found) > 1:
        listed = ", ".join(str(p) for p in found)
        raise PastisFormatError(
            f"{path}: {len(found)} PASTIS folders (with {METADATA_FILE}) below it: {listed}; "
            "point data.root at one of them"
        )
    return found[0]


@dataclass(frozen=True)
class PatchTable:
    """Per-patch metadata in metadata order: ids, folds, tiles, S2 dates, bounds and CRS."""

    frame: pd.DataFrame  # columns patch_id, fold, tile, dates (np.ndarray[datetime64[D]]), bounds
    crs: str | None

    def __len__(self) -> int:
        return len(self.frame)


def _parse_dates(raw: object, where: str) -> np.ndarray:
    if isinstance(raw, str):  # geopandas and some exports give the map as a JSON string
        raw = json.loads(raw)
    if not isinstance(raw, dict) or not raw:
        raise PastisFormatError(f"{where}: 'dates-S2' must be a non-empty index->YYYYMMDD map")
    try:
        items = sorted((int(k), str(int(v))) for k, v in raw.items())
        days = [np.datetime64(f"{v[:4]}-{v[4:6]}-{v[6:8]}", "D") for _, v in items]
    except (TypeError, ValueError) as err:
        raise PastisFormatError(f"{where}: unreadable 'dates-S2' entry ({err})") from err
    if [k for k, _ in items] != list(range(len(items))):
        raise PastisFormatError(f"{where}: 'dates-S2' keys are not 0..{len(items) - 1}")
    return np.array(days, dtype="datetime64[D]")


def _bounds(geometry: dict | None) -> tuple[float, float, float, float]:
    if not geometry or not geometry.get("coordinates"):
        return (np.nan, np.nan, np.nan, np.nan)
    xy = np.array(geometry["coordinates"][0], dtype=float).reshape(-1, 2)
    return (xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max())


def _crs_name(collection: dict) -> str | None:
    name = (collection.get("crs") or {}).get("properties", {}).get("name")
    if not name:
        return None
    # "urn:ogc:def:crs:EPSG::2154" -> "EPSG:2154"
    if "EPSG" in name:
        return "EPSG:" + name.rsplit(":", 1)[-1]
    return name


def _whole(value: object) -> int:
    """``value`` as an int when it is a whole number (30000, 30000.0, "30000"); a fraction
    (30000.5) or a boolean is an error instead of being cut to an integer."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)  # type: ignore[arg-type]  # int(), str() and float() take it or raise


def read_metadata(root: Path) -> PatchTable:
    """Read ``metadata.geojson`` into a :class:`PatchTable` (patch order as in the file)."""
    path = Path(root) / METADATA_FILE
    try:
        collection = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PastisFormatError(f"{path}: cannot read metadata ({err})") from err
    rows = []
    for i, feature in enumerate(collection.get("features", [])):
        props = feature.get("properties", {})
        where = f"{path} feature {i}"
        try:
            patch_id, fold = _whole(props["ID_PATCH"]), _whole(props["Fold"])
        except (KeyError, TypeError, ValueError) as err:
            raise PastisFormatError(f"{where}: missing or invalid ID_PATCH/Fold ({err})") from err
        if fold not in (1, 2, 3, 4, 5):
            raise PastisFormatError(f"{where}: Fold {fold} is not in 1..5")
        rows.append(
            {
                "patch_id": patch_id,
                "fold": fold,
                "tile": str(props.get("TILE", "")),
                "dates": _parse_dates(props.get("dates-S2"), f"{where} (ID_PATCH {patch_id})"),
                "bounds": _bounds(feature.get("geometry")),
            }
        )
    if not rows:
        raise PastisFormatError(f"{path}: no features")
    frame = pd.DataFrame(rows)
    dup = frame.patch_id[frame.patch_id.duplicated()].tolist()
    if dup:
        raise PastisFormatError(f"{path}: duplicated ID_PATCH values {dup[:5]}")
    return PatchTable(frame=frame, crs=_crs_name(collection))


def read_norm(root: Path) -> dict[str, dict[str, list[float]]]:
    """Read the published per-fold statistics ``NORM_S2_patch.json``."""
    path = Path(root) / NORM_FILE
    try:
        norm = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PastisFormatError(f"{path}: cannot read normalisation file ({err})") from err
    for fold in range(1, 6):
        entry = norm.get(f"Fold_{fold}", {})
        for key in ("mean", "std"):
            if len(entry.get(key, [])) != len(BANDS):
                raise PastisFormatError(f"{path}: Fold_{fold}.{key} must hold {len(BANDS)} values")
    return norm


def days_since_reference(dates: np.ndarray) -> np.ndarray:
    """Days between each date and 2018-09-01 (U-TAE's reference), as int64."""
    ref = np.datetime64(REFERENCE_DATE.isoformat(), "D")
    return (dates.astype("datetime64[D]") - ref).astype(np.int64)


def open_npy(path: Path, what: str, content: bytes | None = None) -> np.ndarray:
    """Open a ``.npy`` file (memory-mapped), or parse its ``content`` when already read."""
    try:
        if content is None:
            return np.load(path, mmap_mode="r")
        return np.load(io.BytesIO(content))
    except (OSError, ValueError) as err:
        raise PastisFormatError(f"{path}: cannot read {what} ({err})") from err


def load_s2(
    path: Path, n_dates: int, size: int | None = None, content: bytes | None = None
) -> np.ndarray:
    """Load and validate one S2 series: int16 (T, 10, H, W) with T equal to its date count.

    ``content``: the file's bytes when the caller already read them (to hash them).
    """
    series = open_npy(path, "S2 series", content)
    if series.ndim != 4 or series.shape[1] != len(BANDS):
        raise PastisFormatError(f"{path}: shape {series.shape} is not (T, 10, H, W)")
    if series.dtype != np.int16:
        raise PastisFormatError(f"{path}: dtype {series.dtype} is not int16")
    if series.shape[0] != n_dates:
        raise PastisFormatError(
            f"{path}: {series.shape[0]} frames but metadata lists {n_dates} dates"
        )
    if size is not None and series.shape[2:] != (size, size):
        raise PastisFormatError(f"{path}: frames are {series.shape[2:]}, expected {size}x{size}")
    return np.asarray(series)


def load_target(path: Path, size: int | None = None, content: bytes | None = None) -> np.ndarray:
    """Load channel 0 (semantic class) of a TARGET file as uint8, validating values 0..19.

    ``content``: the file's bytes when the caller already read them (to hash them).
    """
    target = open_npy(path, "target", content)
    if target.ndim != 3 or target.shape[0] < 1:
        raise PastisFormatError(f"{path}: shape {target.shape} is not (3, H, W)")
    if not np.issubdtype(target.dtype, np.integer):
        raise PastisFormatError(f"{path}: dtype {target.dtype} is not an integer type")
    if size is not None and target.shape[1:] != (size, size):
        raise PastisFormatError(f"{path}: labels are {target.shape[1:]}, expected {size}x{size}")
    semantic = np.asarray(target[0])
    lo, hi = int(semantic.min()), int(semantic.max())
    if lo < 0 or hi >= N_CLASSES:
        raise PastisFormatError(f"{path}: class values {lo}..{hi} outside 0..{N_CLASSES - 1}")
    return semantic.astype(np.uint8)


def check_dates(dates: np.ndarray, where: str) -> None:
    """Dates must be strictly increasing (hence unique)."""
    if len(dates) > 1 and not np.all(np.diff(dates.astype("datetime64[D]").astype(np.int64)) > 0):
        raise PastisFormatError(f"{where}: S2 dates are not strictly increasing and unique")
