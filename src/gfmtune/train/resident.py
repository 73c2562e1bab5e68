"""The validation fold resident on the device: its batches (int16 frames, or cached features)
loaded there once and evaluated from there every epoch, instead of read, decoded and copied
again by the DataLoader at every validation.

``val_resident: auto`` keeps it on the device only on CUDA and when the fold takes at most
:data:`FRACTION` of the device's free memory; ``true`` forces it (also on CPU, where it only
saves the decoding); ``false`` never. Never with a frame draw (the frames change every epoch).
The batches are the loader's own, in its order, so the metrics are the loader path's exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)
#: ``auto``: the most of the device's free memory the resident fold may take
FRACTION = 0.25


class ResidentBatches:
    """A loader's batches held on ``device``; iterates as the loader did (``dataset`` kept for
    its normaliser)."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.dataset: Dataset = loader.dataset
        self.batches = [_to(batch, device) for batch in loader]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _to(value: Any, device: torch.device) -> Any:
    """``value`` with its tensors (also in lists and dicts) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value


def fold_bytes(dataset: Dataset) -> int:
    """Bytes of the whole fold's tensors, from its first item (every item has its shapes)."""
    return len(dataset) * sum(t.nbytes for t in _tensors(dataset[0]))


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [t for v in items for t in _tensors(v)]


def wanted(setting: bool | str, dataset: Dataset, device: torch.device) -> bool:
    """Whether the validation fold is to be resident: ``setting`` (auto: on CUDA when it fits
    :data:`FRACTION` of the free memory)."""
    if setting != "auto":
        return bool(setting)
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)  # never run here (no GPU at hand)
    need = fold_bytes(dataset)
    log.info("validation fold: %.2f GB, %.2f GB free on %s", need / 1e9, free / 1e9, device)
    return need <= FRACTION * free


def resident(
    loader: DataLoader, setting: bool | str, device: torch.device, frame_draw: str
) -> DataLoader | ResidentBatches:
    """``loader`` itself, or its batches resident on ``device`` when wanted."""
    if frame_draw != "none":
        if setting is True:
            log.info("validation fold not resident: frame_draw %s draws every epoch", frame_draw)
        return loader
    if not wanted(setting, loader.dataset, device):
        return loader
    batches = ResidentBatches(loader, device)
    log.info("validation fold resident on %s: %d batches", device, len(batches))
    return batches
