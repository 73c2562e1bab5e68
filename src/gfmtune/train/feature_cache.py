"""Frozen-encoder feature cache: encoder features computed once, reused across label fractions
and epochs.

Applies when the encoder is frozen (FT-Rate 0) and its input does not depend on chance (DINO's
resize, CROMA at native size; never CROMA's random crops). The cache holds, for every patch of
the store, the encoder's output levels for the frames of one timestep manifest, in the dtype
the uncached path computes (fp32 on CPU, bf16 under CUDA autocast), so training from it gives
the uncached result. Its key covers everything the features depend on: encoder weights, input
policy, frames, normalisation, store and precision. Jobs that share a key build it once, under
a file lock; a cache is used only once its ``complete.json`` exists.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from gfmtune.data.dataset import PastisZarrDataset
from gfmtune.fileio import atomic_path, atomic_write_text
from gfmtune.models.registry import ModelSpec
from gfmtune.train.loop import autocast

log = logging.getLogger(__name__)
ALL_FOLDS = (1, 2, 3, 4, 5)


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _module_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(
    spec: ModelSpec,
    encoder: nn.Module,
    store: Path,
    timesteps: Path,
    norm: str,
    nodata: str,
    amp: torch.dtype | None,
) -> str:
    facts = {
        "model": spec.name,
        "encoder": _module_digest(encoder),
        "policy": repr(spec.policy),
        "timesteps": _file_digest(timesteps),
        "store": str(Path(store).resolve()),
        "norm": norm,
        "nodata": nodata,
        "dtype": str(amp or torch.float32),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]


class FeatureCache:
    """Per-patch encoder features under ``root/key``: ``{patch_id}.pt`` (list of levels)."""

    def __init__(self, root: Path, key: str) -> None:
        self.dir = Path(root) / key

    @property
    def complete(self) -> bool:
        return (self.dir / "complete.json").exists()

    def path(self, patch_id: int) -> Path:
        return self.dir / f"{patch_id}.pt"

    def build(
        self,
        model: nn.Module,
        spec: ModelSpec,
        dataset: PastisZarrDataset,
        device: torch.device,
        amp: torch.dtype | None,
        progress: bool = True,
    ) -> None:
        """Compute the features of every patch of ``dataset`` (once, whoever asks first)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another job may be building the same cache
            if self.complete:
                return
            model.eval()
            # own generator: building must not advance the global RNG (dropout draws)
            loader = DataLoader(dataset, batch_size=4, shuffle=False, generator=torch.Generator())
            bar = tqdm(total=len(dataset), desc="feature cache", unit="patch", disable=not progress)
            for batch in loader:
                ids = [int(p) for p in batch["patch_id"]]
                todo = [i for i, p in enumerate(ids) if not self.path(p).exists()]
                if todo:
                    with torch.no_grad(), autocast(device, amp):
                        x = spec.policy.encoder_input(batch["image"][todo].to(device))
                        levels = model.encode(x)
                    for j, i in enumerate(todo):
                        with atomic_path(self.path(ids[i])) as tmp:
                            torch.save([level[j].cpu().clone() for level in levels], tmp)
                bar.update(len(batch["patch_id"]))
            bar.close()
            atomic_write_text(self.dir / "complete.json", json.dumps({"patches": len(dataset)}))
            size = sum(p.stat().st_size for p in self.dir.glob("*.pt"))
            log.info("feature cache %s: %d patches, %.1f MB", self.dir, len(dataset), size / 1e6)


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
        return {
            "features": torch.load(self.cache.path(patch_id), weights_only=True),
            "days": torch.as_tensor(self.base.days[i], dtype=torch.int64),
            "label": torch.as_tensor(self.base.reader.label(position), dtype=torch.int64),
            "patch_id": patch_id,
        }
