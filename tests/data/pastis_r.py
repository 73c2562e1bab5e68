"""A small PASTIS-R download as torchgeo fetches it, for the local source's tests.

torchgeo's ``PASTIS`` dataset (``torchgeo/datasets/pastis.py``) downloads ``PASTIS-R.zip`` from
Zenodo record 5735646 and extracts it into its ``root``, which gives ``root/PASTIS-R/`` holding
``metadata.geojson`` (``ID_PATCH``, ``Fold``, ``dates-S2``, ``dates-S1A``, ``dates-S1D``),
``NORM_S2_patch.json`` with ``NORM_S1A_patch.json`` and ``NORM_S1D_patch.json``, ``DATA_S2/``,
``DATA_S1A/`` and ``DATA_S1D/`` (``S1A_{id}.npy``: (T, 3, H, W)), ``ANNOTATIONS/TARGET_{id}.npy``
and ``INSTANCE_ANNOTATIONS/``. The S2 part is PASTIS's layout, which
:func:`~gfmtune.data.synthetic.write_synthetic_pastis` writes; this module adds the rest.

torchgeo's own test fixture (written by ``data.py`` in its ``tests/data/pastis/``) writes
``metadata.geojson`` with ``Fold`` and ``ID_PATCH`` only and no ``NORM_S2_patch.json``:
:func:`strip_to_torchgeo_fixture` makes that from a PASTIS-R folder.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from gfmtune import pastis
from gfmtune.data.synthetic import write_synthetic_pastis
from tests.data.fake_servers import SMALL

#: the archive's name and its top folder, as torchgeo names them
ARCHIVE = "PASTIS-R.zip"
TOP = "PASTIS-R"
RADAR = ("S1A", "S1D")
#: what PASTIS-R holds besides the S2 part (top-level names)
EXTRAS = (
    "DATA_S1A",
    "DATA_S1D",
    "INSTANCE_ANNOTATIONS",
    "NORM_S1A_patch.json",
    "NORM_S1D_patch.json",
)


def write_pastis_r(parent: Path) -> Path:
    """Write ``parent/PASTIS-R/`` (the S2 part from the small synthetic PASTIS, plus radar
    series and dates, their statistics and instance annotations); return that folder."""
    root = write_synthetic_pastis(Path(parent) / TOP, SMALL)
    meta_path = root / pastis.METADATA_FILE
    collection = json.loads(meta_path.read_text())
    rng = np.random.default_rng(7)
    size = SMALL.size
    for sat in RADAR:
        (root / f"DATA_{sat}").mkdir()
        norm = {f"Fold_{f}": {"mean": [0.1, 0.2, 0.3], "std": [1.0, 1.0, 1.0]} for f in range(1, 6)}
        (root / f"NORM_{sat}_patch.json").write_text(json.dumps(norm))
    (root / "INSTANCE_ANNOTATIONS").mkdir()
    for feature in collection["features"]:
        props = feature["properties"]
        pid = props["ID_PATCH"]
        for sat in RADAR:
            n = int(rng.integers(3, 8))  # radar has its own, longer series in PASTIS-R
            days = np.datetime64("2018-09-20") + 6 * np.arange(n)
            props[f"dates-{sat}"] = {
                str(i): int(str(d).replace("-", "")) for i, d in enumerate(days)
            }
            series = rng.normal(size=(n, 3, size, size)).astype(np.float16)
            np.save(root / f"DATA_{sat}" / f"{sat}_{pid}.npy", series)
        instances = rng.integers(0, 9, size=(size, size)).astype(np.int64)
        np.save(root / "INSTANCE_ANNOTATIONS" / f"INSTANCES_{pid}.npy", instances)
    meta_path.write_text(json.dumps(collection))
    return root


def zip_pastis_r(folder: Path, out: Path) -> Path:
    """Zip the PASTIS-R ``folder`` as ``out`` with every member under ``PASTIS-R/``."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(Path(folder).rglob("*")):
            zf.write(path, f"{TOP}/{path.relative_to(folder).as_posix()}")
    return out


def s2_part(root: Path) -> dict[str, bytes]:
    """The files a PASTIS-HD folder with the same S2 data holds (path relative to ``root``)."""
    keep = (pastis.METADATA_FILE, pastis.NORM_FILE, "DATA_S2", "ANNOTATIONS")
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] in keep
    }


def strip_to_torchgeo_fixture(root: Path, with_dates: bool = False) -> Path:
    """Reduce the PASTIS-R folder ``root`` to what torchgeo's test fixture holds: metadata with
    ``Fold`` and ``ID_PATCH`` only (no dates), no ``NORM_*_patch.json``. ``with_dates`` keeps
    the ``dates-*`` maps, as a later version of that fixture writes them (still no NORM files).
    """
    meta_path = root / pastis.METADATA_FILE
    collection = json.loads(meta_path.read_text())
    for feature in collection["features"]:
        props = feature["properties"]
        kept = ("Fold", "ID_PATCH", *(("dates-S2", "dates-S1A", "dates-S1D") if with_dates else ()))
        feature["properties"] = {key: props[key] for key in kept}
    meta_path.write_text(json.dumps(collection))
    for norm in root.glob("NORM_*_patch.json"):
        norm.unlink()
    return root
