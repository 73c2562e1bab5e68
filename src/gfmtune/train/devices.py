"""Device choice and mixed precision: CUDA when present (bf16 autocast by default), else CPU.

On a workstation with several GPUs Snakemake does not set ``CUDA_VISIBLE_DEVICES``, so each
training job claims a free GPU through an exclusive lock file per device (released when the
process ends, even when killed). A preset ``CUDA_VISIBLE_DEVICES`` (SLURM sets it) is respected.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger(__name__)
LOCK_DIR_ENV = "GFMTUNE_GPU_LOCK_DIR"


def select_device(name: str = "auto") -> torch.device:
    """``auto``: the first visible CUDA device, else the CPU; or an explicit torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available here")
    return device


def amp_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Autocast dtype: ``auto`` = bf16 on CUDA and fp32 on CPU; ``bf16``; ``fp32`` (None)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision in ("auto", "bf16"):
        return torch.bfloat16
    raise ValueError(f"unknown precision {precision!r} (auto | bf16 | fp32)")


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV, Path(tempfile.gettempdir()) / "gfmtune-gpu-locks"))


@contextmanager
def claimed_device(name: str = "auto", poll_s: float = 5.0, timeout_s: float | None = None
                   ) -> Iterator[torch.device]:  # fmt: skip
    """The device for this job; with ``auto`` and several visible GPUs, one claimed exclusively."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name != "auto" or count <= 1 or "CUDA_VISIBLE_DEVICES" in os.environ:
        yield select_device(name)
        return
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        for index in range(count):
            handle = open(folder / f"gpu{index}.lock", "w")  # noqa: SIM115 (held until release)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            log.info("claimed GPU %d of %d (lock %s)", index, count, handle.name)
            try:
                yield torch.device("cuda", index)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        if deadline is not None and time.monotonic() > deadline:
            raise RuntimeError(f"no free GPU among {count} after {timeout_s} s (locks in {folder})")
        log.info("all %d GPUs busy; waiting", count)
        time.sleep(poll_s)
