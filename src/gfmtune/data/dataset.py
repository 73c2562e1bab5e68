"""The training/evaluation dataset: patches of the Zarr store, their chosen frames, normalised.

Which patches: the store's patches in ``folds``; with a label-split manifest
(``label_split/{percent}.csv``: ``patch_id``, ``fold``) only the split's patches among them
(training). Which frames: the timestep manifest (``timesteps/{t}.csv``: ``patch_id``, ``frames``,
``days``, one row per store patch). Only the chosen frames are read.

With an :class:`AuthorsDraw` (``train.settings.frame_draw: authors``) a series longer than 50
frames gets new frames at every load, as in the authors' code; shorter series keep the manifest's.

Items carry the store's int16 reflectance: DataLoader workers send half the bytes of float32,
and :func:`model_frames` normalises each batch on the device in the main process. Normalisation
is per band ``(x - mean) / std`` with the store's ``norm_paper`` or ``norm_train_folds``
statistics. As in the paper, nodata (-10000) is normalised like any value (``nodata="keep"``);
``nodata="zero"`` sets those pixels to 0 after normalisation. A model whose input policy has
``scale="reflectance"`` (``moco_scaled``) gets ``x / 10000`` instead (:class:`ReflectanceScaler`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from gfmtune import pastis
from gfmtune.data.manifests import check_timesteps, paper_frames
from gfmtune.data.reader import FrameReader

NORMS = ("paper", "train_folds")
NODATA_MODES = ("keep", "zero")
#: PASTIS stores L2A reflectance x 10000 as int16 (:mod:`gfmtune.pastis`).
REFLECTANCE_SCALE = 10000.0
FRAME_DRAWS = ("none", "authors")
DRAWN_FRAMES = 50  # the authors' draw keeps this many frames of a longer series
SAMPLE_SEED = 0  # draws a dataset's ``sample`` of patches: the same for every cell and run


class ManifestError(ValueError):
    """A manifest is unreadable or does not fit the store; the message names the file."""


class Normaliser:
    """Per-band ``(x - mean) / std`` of int16 (..., band, H, W) into float32: numpy arrays
    (called) or tensors on any device (:meth:`tensor`), with the same float32 operations."""

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], zero_value: int | None = None
    ) -> None:
        std64 = np.asarray(std, dtype=np.float64)
        if np.any(std64 <= 0):
            raise ValueError(f"band std must be positive, got {list(std)}")
        self.scale = (1.0 / std64).astype(np.float32)[:, None, None]
        self.shift = (np.asarray(mean, dtype=np.float64) / std64).astype(np.float32)[:, None, None]
        self.zero_value = zero_value
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_stats": {}}  # device copies stay in their process

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and shift on ``device``, copied there once (a copy per batch would sync)."""
        if device not in self._stats:
            self._stats[device] = tuple(
                torch.from_numpy(a).to(device) for a in (self.scale, self.shift)
            )
        return self._stats[device]

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 of the int16 tensor ``x`` on its device, equal to ``self(x.numpy())``."""
        scale, shift = self._on(x.device)
        out = x.to(torch.float32).mul_(scale).sub_(shift)
        if self.zero_value is not None:
            out.masked_fill_(x == self.zero_value, 0.0)
        return out

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = np.empty(x.shape, dtype=np.float32) if out is None else out
        np.multiply(x, self.scale, out=out)  # x / std - mean / std: two passes, no temporaries
        out -= self.shift
        if self.zero_value is not None:
            out[x == self.zero_value] = 0.0
        return out


class ReflectanceScaler:
    """``x / 10000`` of int16 (..., band, H, W) into float32 (the reflectance itself), with
    :class:`Normaliser`'s interface: one correctly rounded float32 division, so the same on
    numpy and on any device; ``zero_value`` pixels (nodata) set to 0 when given."""

    def __init__(self, zero_value: int | None = None) -> None:
        self.zero_value = zero_value

    def tensor(self, x: torch.Tensor) -> torch.Tensor:
        out = x.to(torch.float32).div_(REFLECTANCE_SCALE)
        if self.zero_value is not None:
            out.masked_fill_(x == self.zero_value, 0.0)
        return out

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = np.empty(x.shape, dtype=np.float32) if out is None else out
        np.divide(x, np.float32(REFLECTANCE_SCALE), out=out, dtype=np.float32)
        if self.zero_value is not None:
            out[x == self.zero_value] = 0.0
        return out


def model_frames(
    images: torch.Tensor, normalise: Normaliser | ReflectanceScaler | None, device: torch.device
) -> torch.Tensor:
    """A batch's frames as the model sees them, on ``device``: the dataset's int16 reflectance
    copied there and normalised there by ``normalise``; float frames (already normalised, such
    as the bench's synthetic tensors) are only copied."""
    x = images.to(device, non_blocking=True)
    if x.is_floating_point():
        return x
    if normalise is None:
        raise ValueError(f"{x.dtype} frames need their dataset's normaliser")
    return normalise.tensor(x)


def store_normaliser(
    attrs: dict[str, Any],
    norm: str,
    nodata: str = "keep",
    store: Path | str = "the store",
    scale: str = "standardise",
) -> Normaliser | ReflectanceScaler:
    """The :class:`Normaliser` for the attributes ``attrs`` of ``store`` (``norm_{norm}``),
    or with ``scale="reflectance"`` (the model's ``InputPolicy.scale``) the
    :class:`ReflectanceScaler`, which uses no statistics. A band whose std is not positive
    (constant, or without a valid pixel, in the training folds) is an error naming the store,
    the band and the remedy."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose from {NORMS}")
    if nodata not in NODATA_MODES:
        raise ValueError(f"unknown nodata mode {nodata!r}; choose from {NODATA_MODES}")
    if scale == "reflectance":
        zero = int(attrs.get("nodata", pastis.NODATA)) if nodata == "zero" else None
        return ReflectanceScaler(zero)
    if scale != "standardise":
        raise ValueError(f"unknown input scale {scale!r}; choose standardise or reflectance")
    stats = attrs[f"norm_{norm}"]
    flat = [
        f"{band} (std {std})"
        for band, std in zip(pastis.BANDS, stats["std"], strict=True)
        if not std > 0
    ]
    if flat:
        raise ManifestError(
            f"{store}: norm_{norm} cannot normalise band(s) {', '.join(flat)}: constant or "
            "without a valid pixel in the folds the statistics cover; "
            + ("use train.settings.norm: paper" if norm == "train_folds" else "rebuild the store")
        )
    zero = int(attrs.get("nodata", pastis.NODATA)) if nodata == "zero" else None
    return Normaliser(stats["mean"], stats["std"], zero)


class AuthorsDraw:
    """The authors' per-load frame draw (ShapingFT ``Pastis.__getitem__``), seeded.

    A series of N > 50 frames first keeps ``randperm(N)[:50]``, in that shuffled order; the
    ``paper`` rule then picks t of those 50 positions (t = 1: the last drawn, a random date), and
    the days follow their frames. The authors drew from the DataLoader worker's global RNG;
    here each draw has its own generator seeded by (``seed``, ``split``, ``pass_index``, patch
    id), so draws do not depend on workers and a rerun or resumed run repeats them. Set
    ``pass_index`` before every pass (the epoch), so that each epoch draws anew.

    ``pass_index`` lives in shared memory, so DataLoader workers kept alive across epochs see
    each new value: set in the main process before iterating a loader, it holds for every item
    of that pass, since workers fetch a pass's items only once its iteration has begun.
    """

    def __init__(self, seed: int, split: str, pass_index: int = 0) -> None:
        self.seed, self.split = seed, split
        self._pass = torch.tensor(pass_index, dtype=torch.int64).share_memory_()

    @property
    def pass_index(self) -> int:
        return int(self._pass)

    @pass_index.setter
    def pass_index(self, index: int) -> None:
        self._pass.fill_(index)

    def generator(self, patch_id: int) -> torch.Generator:
        """The generator of this pass's draw for one patch."""
        entropy = [self.seed, zlib.crc32(self.split.encode()), self.pass_index, patch_id]
        state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state))

    def frames(self, n_frames: int, t: int, patch_id: int) -> np.ndarray:
        """Frame indices (the authors' order) of a series of ``n_frames > 50`` frames."""
        drawn = torch.randperm(n_frames, generator=self.generator(patch_id))[:DRAWN_FRAMES]
        return drawn.numpy()[paper_frames(DRAWN_FRAMES, t)]


def frame_draw(kind: str, seed: int, split: str) -> AuthorsDraw | None:
    """The draw of ``train.settings.frame_draw`` (``none``: the manifest's frames, no draw)."""
    if kind not in FRAME_DRAWS:
        raise ValueError(f"unknown frame_draw {kind!r}; choose from {FRAME_DRAWS}")
    return AuthorsDraw(seed, split) if kind == "authors" else None


# ---- manifests ------------------------------------------------------------------------------


def _read_csv(path: Path, what: str, columns: tuple[str, ...]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} manifest not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: unreadable {what} manifest ({err})") from err
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ManifestError(f"{path}: {what} manifest lacks columns {missing}")
    return frame


def _ints(text: str, path: Path, where: str) -> np.ndarray:
    try:
        return np.array([int(v) for v in text.split()], dtype=np.int64)
    except ValueError:
        raise ManifestError(f"{path}: {where}: {text!r} is not integers") from None


def _int_column(frame: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    try:
        return frame[column].astype(np.int64).to_numpy()
    except ValueError:
        raise ManifestError(f"{path}: column {column!r} must hold integers") from None


def _store_positions(reader: FrameReader, frame: pd.DataFrame, path: Path) -> np.ndarray:
    """Store positions of the manifest's ``patch_id`` column (unknown or repeated ids: error)."""
    patch_ids = _int_column(frame, "patch_id", path)
    unknown = sorted(set(patch_ids.tolist()) - set(reader.patch_ids.tolist()))
    if unknown:
        raise ManifestError(f"{path}: patch_id {unknown[:5]} not in the store {reader.store}")
    ids, counts = np.unique(patch_ids, return_counts=True)
    if np.any(counts > 1):
        raise ManifestError(f"{path}: patch_id {ids[counts > 1][:5].tolist()} listed twice")
    return np.array([reader.index_of(p) for p in patch_ids], dtype=np.int64)


def read_label_split(reader: FrameReader, path: Path) -> np.ndarray:
    """Store positions of the patches in a label-split manifest (folds checked against it)."""
    path = Path(path)
    frame = _read_csv(path, "label split", ("patch_id", "fold"))
    positions = _store_positions(reader, frame, path)
    wrong = positions[_int_column(frame, "fold", path) != reader.folds[positions]]
    if len(wrong):
        bad = reader.patch_ids[wrong[:5]].tolist()
        raise ManifestError(f"{path}: fold disagrees with the store for patches {bad}")
    return positions


def _frames_and_days(
    reader: FrameReader, i: int, frames: str, days: str, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    pid = int(reader.patch_ids[i])
    f = _ints(frames, path, f"patch {pid} frames")
    d = _ints(days, path, f"patch {pid} days")
    n = reader.n_frames(i)
    if len(f) == 0 or len(f) != len(d):
        raise ManifestError(f"{path}: patch {pid} has {len(f)} frames but {len(d)} days")
    if f.min() < 0 or f.max() >= n:
        raise ManifestError(f"{path}: patch {pid} frame index out of range 0..{n - 1}: {f}")
    if not np.array_equal(reader.days(i)[f], d):
        raise ManifestError(f"{path}: patch {pid} days do not match the store's dates")
    return f, d


def read_timesteps(
    reader: FrameReader, path: Path, positions: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames and days for the patches at ``positions``, validated against the store."""
    path = Path(path)
    frame = _read_csv(path, "timestep", ("patch_id", "frames", "days"))
    row_of = {int(i): r for r, i in enumerate(_store_positions(reader, frame, path))}
    missing = [int(reader.patch_ids[i]) for i in positions if int(i) not in row_of]
    if missing:
        raise ManifestError(f"{path}: no row for patches {missing[:5]}")
    texts = frame[["frames", "days"]].to_numpy()
    pairs = [_frames_and_days(reader, int(i), *texts[row_of[int(i)]], path) for i in positions]
    if len({len(f) for f, _ in pairs}) > 1:
        raise ManifestError(f"{path}: patches have different numbers of frames")
    return [f for f, _ in pairs], [d for _, d in pairs]


# ---- dataset --------------------------------------------------------------------------------


def _as_folds(folds: int | Sequence[int]) -> tuple[int, ...]:
    folds = (folds,) if isinstance(folds, int) else tuple(int(f) for f in folds)
    if not folds or any(f not in (1, 2, 3, 4, 5) for f in folds):
        raise ValueError(f"folds must be among 1..5, got {folds}")
    return folds


class PastisZarrDataset(Dataset):
    """Items ``{"image": int16 (t, band, H, W), "days": int64 (t,), "label": int64 (H, W),
    "patch_id": int}`` for the store's patches in ``folds`` (only the ``label_split``'s if given).

    Training: ``PastisZarrDataset(store, timesteps, (1, 2, 3), label_split=...)`` or
    :meth:`training`; validation/test: ``PastisZarrDataset(store, timesteps, 4)`` or
    :meth:`evaluation`. ``norm``: ``"paper"`` or ``"train_folds"`` statistics; ``nodata``:
    ``"keep"`` or ``"zero"``; ``backend`` and ``threads``: see :class:`FrameReader`; ``draw``:
    an :class:`AuthorsDraw` for series longer than 50 frames (None: the manifest's frames).
    ``normalise`` turns the images into the model's input (:func:`model_frames`), as the
    model's ``InputPolicy.scale`` (``scale``) says. ``sample``:
    only this many of the patches, drawn once with :data:`SAMPLE_SEED` (None: all).
    """

    def __init__(
        self,
        store: Path,
        timesteps: Path,
        folds: int | Sequence[int],
        *,
        label_split: Path | None = None,
        norm: str = "paper",
        nodata: str = "keep",
        backend: str | None = None,
        threads: int | None = None,
        draw: AuthorsDraw | None = None,
        sample: int | None = None,
        scale: str = "standardise",
    ) -> None:
        self.reader = FrameReader(store, backend, threads)
        self.folds = _as_folds(folds)
        self.normalise = store_normaliser(self.reader.attrs, norm, nodata, store, scale)
        positions = np.flatnonzero(np.isin(self.reader.folds, self.folds))
        if label_split is not None:
            positions = np.intersect1d(positions, read_label_split(self.reader, label_split))
        if len(positions) == 0:
            where = f" of {label_split}" if label_split is not None else ""
            raise ManifestError(f"{store}: no patches{where} in folds {self.folds}")
        if sample is not None and sample < len(positions):  # the same patches for every cell
            picked = np.random.default_rng(SAMPLE_SEED).choice(positions, sample, replace=False)
            positions = np.sort(picked)
        self.positions = positions
        self._check_scored(label_split)
        self.frames, self.days = read_timesteps(self.reader, timesteps, positions)
        self.draw = draw
        long = (i for i in positions if self.reader.n_frames(i) > DRAWN_FRAMES)
        if draw is not None and (first := next(long, None)) is not None:  # paper rule: t <= 35
            check_timesteps(
                "paper", self.timesteps, DRAWN_FRAMES, int(self.reader.patch_ids[first])
            )

    def _check_scored(self, label_split: Path | None) -> None:
        """A :class:`ManifestError` if no pixel of these patches is labelled (all void): they
        would train nothing, or score nothing (a NaN mIoU)."""
        if any((self.reader.label(int(i)) != pastis.VOID_CLASS).any() for i in self.positions):
            return
        where = f"{label_split}'s {len(self)} patches" if label_split else f"{len(self)} patches"
        raise ManifestError(
            f"{self.reader.store}: no labelled pixel in the {where} of folds {self.folds}: "
            f"every label is void ({pastis.VOID_CLASS}), so there is nothing to train on or "
            "score; check the store's labels (gfmtune store) or choose other patches"
        )

    @classmethod
    def training(
        cls, store: Path, label_split: Path, timesteps: Path, **kwargs: Any
    ) -> PastisZarrDataset:
        """The label split's patches of the training folds 1-3."""
        return cls(store, timesteps, pastis.TRAIN_FOLDS, label_split=label_split, **kwargs)

    @classmethod
    def evaluation(
        cls, store: Path, timesteps: Path, fold: int = pastis.VAL_FOLD, **kwargs: Any
    ) -> PastisZarrDataset:
        """Every patch of one fold (4 validation, 5 test)."""
        return cls(store, timesteps, fold, **kwargs)

    @property
    def patch_ids(self) -> np.ndarray:
        return self.reader.patch_ids[self.positions]

    @property
    def timesteps(self) -> int:
        return len(self.frames[0])

    def __len__(self) -> int:
        return len(self.positions)

    def start_pass(self, index: int) -> None:
        """Make the following loads draw the frames of pass ``index`` (the epoch); no-op
        without a draw."""
        if self.draw is not None:
            self.draw.pass_index = index

    def frames_of(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame indices and their days for item ``k`` at this load (drawn, or the manifest's)."""
        i = int(self.positions[k])
        n = self.reader.n_frames(i)
        if self.draw is None or n <= DRAWN_FRAMES:
            return self.frames[k], self.days[k]
        frames = self.draw.frames(n, self.timesteps, int(self.reader.patch_ids[i]))
        return frames, self.reader.days(i)[frames]

    def __getitem__(self, k: int) -> dict[str, Any]:
        i = int(self.positions[k])
        frames, days = self.frames_of(k)
        return {
            "image": torch.from_numpy(self.reader.read_frames(i, frames)),
            "days": torch.from_numpy(days.copy()),
            "label": torch.from_numpy(self.reader.label(i).astype(np.int64)),
            "patch_id": int(self.reader.patch_ids[i]),
        }
