"""What produced a cell's numbers: settings, seed, code revision, every installed package, the
CPU's and GPU's features that choose kernels, device, cost."""

from __future__ import annotations

import platform
import resource
import subprocess
from importlib import metadata
from pathlib import Path

import torch
from numpy._core import _multiarray_umath as numpy_core

from gfmtune import __version__
from gfmtune.data.argsort_orders import cpu_model
from gfmtune.train import numerics

SOURCE = Path(__file__).parent


def _git(*args: str, cwd: Path = SOURCE) -> str | None:
    """``git args`` run in ``cwd``; None where git or the repository is absent or it fails."""
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=cwd,
                             timeout=10, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def git_revision(cwd: Path = SOURCE) -> str | None:
    """The commit checked out where gfmtune's code lies."""
    return (_git("rev-parse", "HEAD", cwd=cwd) or "").strip() or None


def git_dirty(cwd: Path = SOURCE) -> bool | None:
    """Whether that tree had changes, untracked files included (``git status --porcelain``)."""
    out = _git("status", "--porcelain", cwd=cwd)
    return None if out is None else bool(out.strip())


def installed_packages() -> dict[str, str]:
    """Every distribution ``importlib.metadata`` finds, by name; the first on the path wins,
    as for imports."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name not in found:
            found[name] = dist.version
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def numpy_simd() -> dict[str, list[str]]:
    """numpy's SIMD targets: those built in as its baseline, and the dispatch targets this CPU
    enabled (``np.show_runtime()``'s data)."""
    return {
        "baseline": list(numpy_core.__cpu_baseline__),
        "enabled": [f for f in numpy_core.__cpu_dispatch__ if numpy_core.__cpu_features__.get(f)],
    }


def cuda_facts(device: torch.device) -> dict | None:
    """CUDA and cuDNN versions and the GPU's name when the cell ran on a CUDA device."""
    if device.type != "cuda":
        return None
    return {
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "gpu": torch.cuda.get_device_name(device),
    }


def collect(
    settings: dict, seed: int, device: torch.device, wall_seconds: float, attempts: int
) -> dict:
    """Provenance of a cell. ``wall_seconds`` (and GPU-hours) cover all its ``attempts``
    (runs resumed after a kill); peak memory is the last attempt's."""
    cuda = device.type == "cuda"
    return {
        "settings": settings,
        "seed": seed,
        "gfmtune_version": __version__,
        "git_revision": git_revision(),
        "git_dirty": git_dirty(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model()[0],
        "packages": installed_packages(),
        "cpu_numerics": numerics.describe(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "numpy_simd": numpy_simd(),
        "cuda": cuda_facts(device),
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "wall_seconds": round(wall_seconds, 3),
        "gpu_hours": round(wall_seconds / 3600, 6) if cuda else 0.0,
        "attempts": attempts,
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "peak_host_memory_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
