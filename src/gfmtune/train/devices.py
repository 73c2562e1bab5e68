"""Device choice and mixed precision: CUDA when present (bf16 autocast by default), else CPU."""

from __future__ import annotations

import torch


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
