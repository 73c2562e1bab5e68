"""Frozen-encoder feature cache: encoder features computed once, reused across label fractions
and epochs.

Applies when the encoder is frozen (FT-Rate 0). With a fixed input (DINO's resize, CROMA at
native size) the cache holds, for every patch of the store, the encoder's output levels for the
frames of one timestep manifest, and training, validation and test read them. CROMA's random
training crops cannot be cached, but its evaluation windows are fixed: an evaluation cache holds,
for every validation and test patch, the levels of its sliding windows (one more axis, the
windows, before the frames), so validation and test decode them while training encodes its crops.
Features are stored in the dtype the uncached path computes (fp32 on CPU, bf16 under CUDA
autocast), so training from them gives the uncached result. Its key covers everything the
features depend on: encoder weights, input policy, window geometry, frames, normalisation, the
store's content digest (not its path: another dataset converted to the same path gets its own
cache) and precision. Jobs that share a key build it once, under a file lock. ``complete.json``
records every file's size: a cache is used only while every file has its recorded size; a build
keeps the files that do (or, without a record, that load) and recomputes the others. A file
that fails to load during training is set aside with an error naming it, so the next run
rebuilds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from pathlib import Path

import torch
import zarr
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from gfmtune.data.dataset import PastisZarrDataset, model_frames
from gfmtune.fileio import atomic_path, atomic_write_text, set_aside
from gfmtune.models.registry import ModelSpec
from gfmtune.tensorio import CorruptFileError, load_tensors
from gfmtune.train.loop import autocast
from gfmtune.verify import file_digest

log = logging.getLogger(__name__)
ALL_FOLDS = (1, 2, 3, 4, 5)
COMPLETE = "complete.json"


def store_content_digest(store: Path) -> str | None:
    """The store's ``content_digest`` attribute (a digest of its source files), if recorded."""
    return zarr.open_group(str(store), mode="r").attrs.get("content_digest")


def _module_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(
    spec: ModelSpec,
    encoder: nn.Module,
    content_digest: str,
    timesteps: Path,
    norm: str,
    nodata: str,
    amp: torch.dtype | None,
    windows: list[tuple[int, int]] | None = None,
) -> str:
    """The cache's name; ``windows``: the corners of an evaluation cache's windows (their side
    is the policy's size)."""
    facts = {
        "model": spec.name,
        "encoder": _module_digest(encoder),
        "policy": repr(spec.policy),
        "timesteps": file_digest(timesteps, "sha256"),
        "store": content_digest,
        "norm": norm,
        "nodata": nodata,
        "dtype": str(amp or torch.float32),
    }
    if windows is not None:  # absent from a whole-patch cache's key, which stays as it was
        facts["windows"] = [list(corner) for corner in windows]
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]


class FeatureCache:
    """Per-patch encoder features under ``root/key``: ``{patch_id}.pt`` (list of levels)."""

    def __init__(self, root: Path, key: str) -> None:
        self.dir = Path(root) / key

    def path(self, patch_id: int | str) -> Path:
        return self.dir / f"{patch_id}.pt"

    def _recorded(self) -> dict[str, int]:
        """Patch id -> file size, as recorded on completion (empty when there is no record)."""
        try:
            return dict(json.loads((self.dir / COMPLETE).read_text())["sizes"])
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    @property
    def complete(self) -> bool:
        """Completed, and every file still has its recorded size (cheap: one stat per file)."""
        sizes = self._recorded()
        return bool(sizes) and all(_size(self.path(p)) == n for p, n in sizes.items())

    def discard(self, path: Path, reason: str) -> None:
        """Set a bad feature file aside so that the next build recomputes it."""
        try:
            aside = set_aside(path)
        except FileNotFoundError:  # already set aside, by another job or worker
            return
        log.warning("%s: %s; moved to %s, to be rebuilt", path, reason, aside.name)

    def _usable(self, patch_id: int, recorded: int | None) -> bool:
        """Whether the patch's file can be kept: its recorded size, or without record, it loads."""
        path = self.path(patch_id)
        size = _size(path)
        if size < 0:
            return False
        if recorded is not None:
            if size == recorded:
                return True
            self.discard(path, f"{size} bytes, {recorded} recorded")
            return False
        try:
            load_tensors(path)
        except CorruptFileError as err:
            self.discard(path, str(err).split(": ", 1)[-1])
            return False
        return True

    def build(
        self,
        model: nn.Module,
        spec: ModelSpec,
        dataset: PastisZarrDataset,
        device: torch.device,
        amp: torch.dtype | None,
        progress: bool = True,
    ) -> None:
        """Compute the missing or bad features of ``dataset``'s patches (whoever asks first)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another job may be building the same cache
            if self.complete:
                return
            recorded = self._recorded()
            model.eval()
            # own generator: building must not advance the global RNG (dropout draws)
            loader = DataLoader(dataset, batch_size=4, shuffle=False, generator=torch.Generator())
            bar = tqdm(total=len(dataset), desc="feature cache", unit="patch", disable=not progress)
            sizes = {}
            for batch in loader:
                ids = [int(p) for p in batch["patch_id"]]
                todo = [i for i, p in enumerate(ids) if not self._usable(p, recorded.get(str(p)))]
                if todo:
                    frames = model_frames(batch["image"][todo], dataset.normalise, device)
                    levels = cached_levels(model, spec, frames, device, amp)
                    for j, i in enumerate(todo):
                        with atomic_path(self.path(ids[i])) as tmp:
                            torch.save([level[j].cpu().clone() for level in levels], tmp)
                sizes |= {str(p): _size(self.path(p)) for p in ids}
                bar.update(len(batch["patch_id"]))
            bar.close()
            record = {"patches": len(dataset), "sizes": sizes}
            atomic_write_text(self.dir / COMPLETE, json.dumps(record))
            total = sum(sizes.values())
            log.info("feature cache %s: %d patches, %.1f MB", self.dir, len(dataset), total / 1e6)


def cached_levels(
    model: nn.Module,
    spec: ModelSpec,
    images: torch.Tensor,
    device: torch.device,
    amp: torch.dtype | None,
) -> list[torch.Tensor]:
    """A frozen encoder's levels of ``images`` (B, T, 10, H, W) through the policy's evaluation
    input, batched per sample as the cache stores them: (B, T, C, h, w), with sliding windows
    (B, windows, T, C, h, w)."""
    with torch.no_grad(), autocast(device, amp):
        levels = model.encode(spec.policy.eval_input(images.to(device)))
    if spec.policy.windowed:
        levels = [level.unflatten(0, (len(images), -1)) for level in levels]
    return levels


def _size(path: Path) -> int:
    """File size in bytes, -1 when missing."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


class CachedFeatures(Dataset):
    """A :class:`PastisZarrDataset`'s items with cached encoder features instead of images."""

    def __init__(self, base: PastisZarrDataset, cache: FeatureCache) -> None:
        if not cache.complete:
            raise RuntimeError(f"{cache.dir}: feature cache is not complete")
        self.base, self.cache = base, cache

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        position = int(self.base.positions[i])
        patch_id = int(self.base.reader.patch_ids[position])
        path = self.cache.path(patch_id)
        try:
            features = load_tensors(path)
        except CorruptFileError as err:
            self.cache.discard(path, "unreadable")
            raise CorruptFileError(
                f"{err}; moved aside: rerun the job, it rebuilds the file and resumes"
            ) from err
        return {
            "features": features,
            "days": torch.as_tensor(self.base.days[i], dtype=torch.int64),
            "label": torch.as_tensor(self.base.reader.label(position), dtype=torch.int64),
            "patch_id": patch_id,
        }
