"""PastisZarrDataset serves the right patches, frames and normalisation, or fails clearly."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from gfmtune import pastis
from gfmtune.data.dataset import ManifestError, PastisZarrDataset, model_frames
from gfmtune.data.manifests import paper_frames, write_timesteps
from gfmtune.data.reader import FrameReader
from gfmtune.train.loop import _batches


@pytest.fixture(scope="module")
def manifests(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Paper timesteps 1, 3, 5 and a label split holding every other training patch."""
    out = tmp_path_factory.mktemp("manifests")
    write_timesteps(tiny_store, out / "timesteps", [1, 3, 5], "paper")
    reader = FrameReader(tiny_store)
    train = np.flatnonzero(np.isin(reader.folds, pastis.TRAIN_FOLDS))[::2]
    split = pd.DataFrame({"patch_id": reader.patch_ids[train], "fold": reader.folds[train]})
    (out / "label_split").mkdir()
    split.to_csv(out / "label_split" / "50.csv", index=False)
    return out


def _write_timesteps(path: Path, reader: FrameReader, frames: dict[int, list[int]]) -> Path:
    rows = []
    for i, pid in enumerate(reader.patch_ids):
        f = np.array(frames.get(i, [0, 0]))
        days = reader.days(i)[f]
        rows.append((pid, " ".join(map(str, f)), " ".join(map(str, days))))
    pd.DataFrame(rows, columns=["patch_id", "frames", "days"]).to_csv(path, index=False)
    return path


def _hand_norm(x: np.ndarray, stats: dict) -> np.ndarray:
    mean = np.array(stats["mean"])[:, None, None]
    std = np.array(stats["std"])[:, None, None]
    return (x.astype(np.float64) - mean) / std


def _seen(ds: PastisZarrDataset, item: dict) -> torch.Tensor:
    """An item's frames as the model sees them."""
    return model_frames(item["image"], ds.normalise, torch.device("cpu"))


def test_training_items(tiny_store: Path, tiny_root: Path, manifests: Path) -> None:
    split = pd.read_csv(manifests / "label_split" / "50.csv")
    ds = PastisZarrDataset.training(
        tiny_store, manifests / "label_split" / "50.csv", manifests / "timesteps" / "5.csv"
    )
    assert sorted(ds.patch_ids.tolist()) == sorted(split.patch_id.tolist())
    assert len(ds) == len(split) and ds.timesteps == 5
    for k in range(len(ds)):
        item = ds[k]
        assert item["image"].dtype == torch.int16 and item["image"].shape == (5, 10, 16, 16)
        assert item["days"].dtype == torch.int64 and item["days"].shape == (5,)
        assert item["label"].dtype == torch.int64 and item["label"].shape == (16, 16)
        pid = item["patch_id"]
        assert isinstance(pid, int) and pid == ds.patch_ids[k]
        series = np.load(pastis.s2_path(tiny_root, pid))
        frames = paper_frames(len(series), 5)
        assert np.array_equal(item["image"].numpy(), series[frames])
        expected = _hand_norm(series[frames], ds.reader.attrs["norm_paper"])
        np.testing.assert_allclose(_seen(ds, item).numpy(), expected, rtol=1e-5, atol=1e-5)
        target = np.load(pastis.target_path(tiny_root, pid))[0]
        assert np.array_equal(item["label"].numpy(), target.astype(np.int64))
        dates = ds.reader.dates(ds.reader.index_of(pid))[frames]
        assert item["days"].tolist() == pastis.days_since_reference(dates).tolist()


@pytest.mark.parametrize("fold", [4, 5])
def test_evaluation_serves_the_whole_fold(tiny_store: Path, manifests: Path, fold: int) -> None:
    ds = PastisZarrDataset.evaluation(tiny_store, manifests / "timesteps" / "1.csv", fold)
    reader = ds.reader
    assert ds.patch_ids.tolist() == reader.patch_ids[reader.folds == fold].tolist()
    for k in range(len(ds)):
        i = reader.index_of(ds.patch_ids[k])
        last = reader.read_frames(i, np.array([reader.n_frames(i) - 1]))
        assert torch.equal(ds[k]["image"], torch.from_numpy(last))


def test_folds_restrict_the_split(tiny_store: Path, manifests: Path) -> None:
    split = manifests / "label_split" / "50.csv"
    ds = PastisZarrDataset(tiny_store, manifests / "timesteps" / "3.csv", 1, label_split=split)
    kept = pd.read_csv(split)
    assert sorted(ds.patch_ids.tolist()) == sorted(kept.patch_id[kept.fold == 1].tolist())
    with pytest.raises(ManifestError, match=r"no patches of .*50\.csv in folds"):
        PastisZarrDataset(tiny_store, manifests / "timesteps" / "3.csv", 4, label_split=split)
    with pytest.raises(ValueError, match=r"folds must be among 1\.\.5"):
        PastisZarrDataset(tiny_store, manifests / "timesteps" / "3.csv", (0, 1))


def test_train_fold_statistics(tiny_store: Path, tiny_root: Path, manifests: Path) -> None:
    ds = PastisZarrDataset(tiny_store, manifests / "timesteps" / "3.csv", 2, norm="train_folds")
    stats = ds.reader.attrs["norm_train_folds"]
    assert stats["mean"] != ds.reader.attrs["norm_paper"]["mean"]
    item = ds[0]
    series = np.load(pastis.s2_path(tiny_root, item["patch_id"]))
    expected = _hand_norm(series[paper_frames(len(series), 3)], stats)
    np.testing.assert_allclose(_seen(ds, item).numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown norm"):
        PastisZarrDataset(tiny_store, manifests / "timesteps" / "3.csv", 2, norm="published")
    with pytest.raises(ValueError, match="unknown nodata mode"):
        PastisZarrDataset(tiny_store, manifests / "timesteps" / "3.csv", 2, nodata="nan")


def test_nodata_keep_or_zero(tiny_store: Path, tiny_root: Path, tmp_path: Path) -> None:
    reader = FrameReader(tiny_store)
    hits = [
        (i, f)
        for i in range(len(reader))
        for f in range(reader.n_frames(i))
        if (reader.read_frames(i, np.array([f])) == pastis.NODATA).any()
    ]
    assert hits, "the fixture must contain nodata for this test to mean something"
    i, f = hits[0]
    manifest = _write_timesteps(tmp_path / "2.csv", reader, {i: [f, 0]})
    fold = int(reader.folds[i])
    keep = PastisZarrDataset(tiny_store, manifest, fold, nodata="keep")
    zero = PastisZarrDataset(tiny_store, manifest, fold, nodata="zero")
    k = keep.patch_ids.tolist().index(reader.patch_ids[i])
    raw = reader.read_frames(i, np.array([f, 0]))
    mask = raw == pastis.NODATA
    kept, zeroed = _seen(keep, keep[k]).numpy(), _seen(zero, zero[k]).numpy()
    expected = _hand_norm(raw, reader.attrs["norm_paper"])
    np.testing.assert_allclose(kept, expected, rtol=1e-5, atol=1e-5)  # paper: like any value
    assert (zeroed[mask] == 0).all() and np.array_equal(zeroed[~mask], kept[~mask])


def test_dataloader_batches(tiny_store: Path, manifests: Path) -> None:
    ds = PastisZarrDataset.evaluation(tiny_store, manifests / "timesteps" / "5.csv", 5)
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    ids = []
    for batch in loader:
        assert batch["image"].shape[1:] == (5, 10, 16, 16) and batch["days"].shape[1:] == (5,)
        ids += batch["patch_id"].tolist()
    assert ids == ds.patch_ids.tolist()


# ---- errors ---------------------------------------------------------------------------------


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_missing_manifests(tiny_store: Path, manifests: Path, tmp_path: Path) -> None:
    missing = tmp_path / "timesteps" / "6.csv"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing}: timestep manifest")):
        PastisZarrDataset(tiny_store, missing, 4)
    split = tmp_path / "label_split" / "1.csv"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{split}: label split manifest")):
        PastisZarrDataset.training(tiny_store, split, manifests / "timesteps" / "5.csv")


def test_bad_timestep_manifests(tiny_store: Path, manifests: Path, tmp_path: Path) -> None:
    reader = FrameReader(tiny_store)
    fold = int(reader.folds[0])
    pid, n = int(reader.patch_ids[0]), reader.n_frames(0)
    cases = {
        "columns.csv": ("patch_id,frames\n1,0\n", r"lacks columns \['days'\]"),
        "unknown.csv": ("patch_id,frames,days\n999,0,10\n", r"patch_id \[999\] not in the store"),
    }
    for name, (text, message) in cases.items():
        path = _csv(tmp_path / name, text)
        with pytest.raises(ManifestError, match=re.escape(str(path)) + ".*" + message):
            PastisZarrDataset(tiny_store, path, fold)
    for name, frames, message in [
        ("range.csv", f"0 {n}", f"patch {pid} frame index out of range"),
        ("ints.csv", "0 a", f"patch {pid} frames: '0 a' is not integers"),
        ("short.csv", "0", f"patch {pid} has 1 frames but 2 days"),
    ]:
        path = _write_timesteps(tmp_path / name, reader, {})
        _csv(path, path.read_text().replace(f"\n{pid},0 0,", f"\n{pid},{frames},", 1))
        with pytest.raises(ManifestError, match=re.escape(f"{path}: {message}")):
            PastisZarrDataset(tiny_store, path, fold)
    days = _write_timesteps(tmp_path / "days.csv", reader, {0: [0, 1]})
    frame = pd.read_csv(days, dtype=str)
    frame.loc[0, "days"] = "1 2"
    frame.to_csv(days, index=False)
    with pytest.raises(ManifestError, match=f"patch {pid} days do not match the store's dates"):
        PastisZarrDataset(tiny_store, days, fold)
    partial = _write_timesteps(tmp_path / "partial.csv", reader, {})
    frame = pd.read_csv(partial, dtype=str)
    frame[frame.patch_id != str(pid)].to_csv(partial, index=False)
    with pytest.raises(ManifestError, match=rf"partial.csv: no row for patches \[{pid}\]"):
        PastisZarrDataset(tiny_store, partial, fold)


def test_bad_label_split(tiny_store: Path, manifests: Path, tmp_path: Path) -> None:
    reader = FrameReader(tiny_store)
    train = np.flatnonzero(np.isin(reader.folds, pastis.TRAIN_FOLDS))
    pid, fold = int(reader.patch_ids[train[0]]), int(reader.folds[train[0]])
    timesteps = manifests / "timesteps" / "1.csv"
    wrong = _csv(tmp_path / "wrong.csv", f"patch_id,fold\n{pid},{fold % 3 + 1}\n")
    with pytest.raises(ManifestError, match=rf"wrong.csv: fold disagrees .* \[{pid}\]"):
        PastisZarrDataset.training(tiny_store, wrong, timesteps)
    unknown = _csv(tmp_path / "unknown.csv", "patch_id,fold\n5,1\n")
    with pytest.raises(ManifestError, match=r"unknown.csv: patch_id \[5\] not in the store"):
        PastisZarrDataset.training(tiny_store, unknown, timesteps)
    twice = _csv(tmp_path / "twice.csv", f"patch_id,fold\n{pid},{fold}\n{pid},{fold}\n")
    with pytest.raises(ManifestError, match=rf"twice.csv: patch_id \[{pid}\] listed twice"):
        PastisZarrDataset.training(tiny_store, twice, timesteps)


@pytest.mark.parametrize("norm", ["paper", "train_folds"])
@pytest.mark.parametrize("nodata", ["keep", "zero"])
def test_the_model_sees_the_normalisation_of_the_reader(
    tiny_store: Path, manifests: Path, norm: str, nodata: str
) -> None:
    """int16 batches normalised in the main process (``loop._batches``) equal the float32 of the
    reader's normalising transform (what workers normalising the frames would send), bit for
    bit."""
    ds = PastisZarrDataset(tiny_store, manifests / "timesteps" / "5.csv", (1, 2, 3, 4, 5),
                           norm=norm, nodata=nodata)  # fmt: skip
    seen = [x for x, _, _ in _batches(DataLoader(ds, batch_size=4), torch.device("cpu"))]
    before = [
        torch.from_numpy(ds.reader.read_frames(int(i), frames, ds.normalise))
        for i, frames in zip(ds.positions, ds.frames, strict=True)
    ]
    assert all(x.dtype == torch.float32 for x in seen)
    assert torch.equal(torch.cat(seen), torch.stack(before))
    if nodata == "zero":
        raw = torch.cat([b["image"] for b in DataLoader(ds, batch_size=4)])
        assert (raw == pastis.NODATA).any() and (torch.cat(seen)[raw == pastis.NODATA] == 0).all()


def test_frames_without_their_normaliser_are_refused() -> None:
    frames = torch.zeros(1, 2, 10, 4, 4, dtype=torch.int16)
    with pytest.raises(ValueError, match="int16 frames need their dataset's normaliser"):
        model_frames(frames, None, torch.device("cpu"))
    ready = torch.randn(1, 2, 10, 4, 4)
    assert model_frames(ready, None, torch.device("cpu")) is ready  # already normalised
