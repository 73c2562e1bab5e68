"""The synthetic generator writes the PASTIS layout, deterministically, with learnable signal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gfmtune import pastis
from gfmtune.data.manifests import paper_frames
from gfmtune.data.synthetic import SyntheticSpec, write_synthetic_pastis


def test_layout_matches_pastis(tiny_root: Path) -> None:
    collection = json.loads((tiny_root / "metadata.geojson").read_text())
    props = [f["properties"] for f in collection["features"]]
    ids = [p["ID_PATCH"] for p in props]
    assert len(ids) == 20 and len(set(ids)) == 20
    assert np.any(np.diff(sorted(ids)) > 1), "ids must not be contiguous"
    assert {p["Fold"] for p in props} == {1, 2, 3, 4, 5}
    assert {len(p["dates-S2"]) for p in props} == {5, 9}
    for p in props:
        first = str(p["dates-S2"]["0"])
        assert len(first) == 8 and first.startswith(("2018", "2019"))
        series = np.load(pastis.s2_path(tiny_root, p["ID_PATCH"]))
        assert series.dtype == np.int16 and series.shape == (len(p["dates-S2"]), 10, 16, 16)
        target = np.load(pastis.target_path(tiny_root, p["ID_PATCH"]))
        assert target.shape == (3, 16, 16)
    dtypes = {np.load(pastis.target_path(tiny_root, i)).dtype for i in ids}
    assert dtypes == {np.dtype(np.uint8), np.dtype(np.uint16)}
    norm = pastis.read_norm(tiny_root)
    assert set(norm) == {f"Fold_{k}" for k in range(1, 6)}
    table = pastis.read_metadata(tiny_root)
    assert table.crs == "EPSG:2154"
    assert all(b[2] - b[0] == 160.0 for b in table.frame.bounds)


def test_nodata_and_all_classes_present(tmp_path: Path) -> None:
    root = write_synthetic_pastis(tmp_path, SyntheticSpec(n_patches=40, size=32, seed=1))
    ids = pastis.read_metadata(root).frame.patch_id
    series = [np.load(pastis.s2_path(root, i)) for i in ids]
    assert any((s == pastis.NODATA).any() for s in series)
    classes = np.unique(
        np.concatenate([pastis.load_target(pastis.target_path(root, i)).ravel() for i in ids])
    )
    assert set(range(pastis.N_CLASSES)) - set(classes.tolist()) <= {18, 17}, classes


def test_deterministic(tmp_path: Path) -> None:
    spec = SyntheticSpec(n_patches=6, size=16, frames_per_tile=(4, 7), seed=5)
    a, b = (
        write_synthetic_pastis(tmp_path / "a", spec),
        write_synthetic_pastis(tmp_path / "b", spec),
    )
    for name in ("metadata.geojson", "NORM_S2_patch.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for pid in pastis.read_metadata(a).frame.patch_id:
        assert np.array_equal(np.load(pastis.s2_path(a, pid)), np.load(pastis.s2_path(b, pid)))
    other = write_synthetic_pastis(tmp_path / "c", SyntheticSpec(6, 16, (4, 7), seed=6))
    pid = pastis.read_metadata(a).frame.patch_id[0]
    assert not np.array_equal(np.load(pastis.s2_path(a, pid)), np.load(pastis.s2_path(other, pid)))


def _pixels(root: Path, table: pastis.PatchTable, folds: set[int], t: int, limit: int | None):
    """Per-pixel features (paper frames, normalised) and labels of patches in ``folds``."""
    xs, ys = [], []
    rows = table.frame[table.frame.fold.isin(folds)].head(limit)
    for pid, dates in zip(rows.patch_id, rows.dates, strict=True):
        series = np.load(pastis.s2_path(root, pid))[paper_frames(len(dates), t)].astype(np.float32)
        mean = np.array(pastis.PAPER_MEAN, dtype=np.float32)[:, None, None]
        series = np.clip((series - mean) / 2000.0, -2, 2)  # robust to clouds and nodata
        label = pastis.load_target(pastis.target_path(root, pid))
        keep = label.ravel() != pastis.VOID_CLASS
        xs.append(series.reshape(-1, series.shape[-2] * series.shape[-1]).T[keep])
        ys.append(label.ravel()[keep])
    return np.concatenate(xs), np.concatenate(ys)


def _centroid_accuracy(root: Path, t: int, train_patches: int | None) -> float:
    """Nearest-class-mean pixel classifier trained on folds 1-3, scored on fold 5."""
    table = pastis.read_metadata(root)
    x, y = _pixels(root, table, {1, 2, 3}, t, train_patches)
    xt, yt = _pixels(root, table, {5}, t, None)
    classes = np.unique(y)
    centroids = np.stack([x[y == c].mean(0) for c in classes])
    pred = classes[((xt[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)]
    return float((pred == yt).mean())


@pytest.fixture(scope="module")
def signal_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SyntheticSpec(n_patches=60, size=32, frames_per_tile=(38, 61), seed=0)
    return write_synthetic_pastis(tmp_path_factory.mktemp("signal"), spec)


def test_more_frames_help(signal_root: Path) -> None:
    acc = {t: _centroid_accuracy(signal_root, t, None) for t in (1, 6, 35)}
    assert acc[6] > acc[1] + 0.15, acc
    assert acc[35] > acc[1] + 0.2, acc


def test_more_labels_help(signal_root: Path) -> None:
    few, many = _centroid_accuracy(signal_root, 6, 2), _centroid_accuracy(signal_root, 6, None)
    assert many > few + 0.15, (few, many)
