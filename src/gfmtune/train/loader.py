"""The DataLoaders of a training job: how many workers (``train.settings.workers``), a loader
whose shuffle depends on its order generator alone, and a pass resumed mid-epoch that skips the
batches already done without loading their data."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from gfmtune.train.settings import TrainSettings

log = logging.getLogger(__name__)

#: ``workers: auto`` starts at most this many: the 16 CPUs the SLURM profile and the train rule
#: ask for, but the main process's. At t = 35 one worker delivers 20-29 samples/s, so 15 bound a
#: step of batch 8 at 18-27 ms (8 bound it at 35-50 ms, slower than frozen DINO's ~30 ms of
#: compute). Each holds PREFETCH batches in /dev/shm (docs/performance.md: Data path).
MAX_AUTO_WORKERS = 15
#: Batches each worker prepares ahead (DataLoader ``prefetch_factor``).
PREFETCH = 2


def job_cpus() -> int:
    """CPUs of this job: SLURM's grant (``SLURM_CPUS_PER_TASK``), else those it may run on, at
    most its torch threads (``--threads``, which the train rule sets to the job's share of the
    machine, so that the jobs running at once do not start a full set of workers each)."""
    granted = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if granted.isdigit() and int(granted) > 0:
        return int(granted)
    return min(len(os.sched_getaffinity(0)), torch.get_num_threads())


def loader_workers(setting: int | str) -> int:
    """DataLoader workers of ``train.settings.workers``: ``auto`` is the job's CPUs but one
    (the main process's), at most :data:`MAX_AUTO_WORKERS`."""
    if setting == "auto":
        return max(0, min(MAX_AUTO_WORKERS, job_cpus() - 1))
    return int(setting)


def build_loader(
    dataset: Dataset,
    batch: int,
    settings: TrainSettings,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    persistent: bool = True,
) -> DataLoader:
    """A loader of ``dataset``: shuffled by ``generator`` alone (starting workers draws their
    seeds from a private generator, not from it or the global RNG, so results do not depend on
    workers), workers kept alive across epochs unless ``persistent`` is false, pinned batches
    on CUDA."""
    workers = loader_workers(settings.workers)
    order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=order,
        generator=torch.Generator().manual_seed(0),  # worker seeds only
        drop_last=drop_last,
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=PREFETCH if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
    )


def job_loaders(
    datasets: list, settings: TrainSettings, seed: int, split: Path
) -> tuple[DataLoader, DataLoader, DataLoader, torch.Generator]:
    """A training job's loaders of its training, validation and test ``datasets``, and the
    generator that shuffles the training batches (seeded with the cell's ``seed``); ``split``:
    the label split's manifest, named when its patches make no batch."""
    train_ds, val_ds, test_ds = datasets
    order = torch.Generator().manual_seed(seed)
    batch = settings.batch_size
    train = build_loader(train_ds, batch, settings, True, order, settings.drop_last)
    if len(train) == 0:
        raise ValueError(
            f"{split}: {len(train_ds)} training patches make no batch of {batch} with "
            "drop_last; lower train.batch_size or set drop_last false"
        )
    if len(train_ds) < batch:
        log.warning(
            "%s: %d training patches, fewer than one batch of %d: each epoch is one step on a "
            "smaller batch",
            split,
            len(train_ds),
            batch,
        )
    val, test = (
        build_loader(ds, settings.eval_batch_size, settings, False) for ds in (val_ds, test_ds)
    )
    return train, val, test, order


class SkipFirst(Sampler):
    """A sampler whose next pass leaves out the first :attr:`skip` indices of ``inner``'s."""

    def __init__(self, inner: Sampler) -> None:
        self.inner, self.skip = inner, 0

    def __iter__(self) -> Iterator:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.inner), skip, None)

    def __len__(self) -> int:
        return len(self.inner)


def skippable(loader: DataLoader) -> SkipFirst:
    """Wraps the sampler of ``loader``'s batches (consecutive runs of its indices), so that a
    pass resumed mid-epoch skips the batches done without loading their data."""
    batches = loader.batch_sampler
    batches.sampler = SkipFirst(batches.sampler)
    return batches.sampler
