"""What produced a cell's numbers: settings, seed, code revision, packages, device, cost."""

from __future__ import annotations

import platform
import resource
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("gfmtune", "torch", "torchvision", "timm", "numpy", "xarray", "zarr", "tensorstore")


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect(
    settings: dict, seed: int, device: torch.device, wall_seconds: float, attempts: int
) -> dict:
    """Provenance of a cell. ``wall_seconds`` (and GPU-hours) cover all its ``attempts``
    (runs resumed after a kill); peak memory is the last attempt's."""
    cuda = device.type == "cuda"
    return {
        "settings": settings,
        "seed": seed,
        "git_revision": git_revision(),
        "packages": {name: _version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "wall_seconds": round(wall_seconds, 3),
        "gpu_hours": round(wall_seconds / 3600, 6) if cuda else 0.0,
        "attempts": attempts,
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "peak_host_memory_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
