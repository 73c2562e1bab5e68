"""Device choice and numerics: CUDA when present (bf16 autocast by default), else CPU; TF32,
deterministic algorithms and ``torch.compile`` as the training settings ask.

On a workstation with several GPUs Snakemake does not set ``CUDA_VISIBLE_DEVICES``, so each
training job claims a free GPU through an exclusive lock file per device (released when the
process ends, even when killed), in a folder shared by every user's jobs (mode 1777, lock files
0666). A preset ``CUDA_VISIBLE_DEVICES`` (SLURM sets it) is respected.
The job's GPU is made the current CUDA device (:func:`make_current`).
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)
LOCK_DIR_ENV = "GFMTUNE_GPU_LOCK_DIR"
#: The device names gfmtune accepts (the schema's ``train.device`` pattern is the same).
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"
#: ``CUBLAS_WORKSPACE_CONFIG`` values under which cuBLAS is deterministic (CUDA >= 10.2).
DETERMINISTIC_CUBLAS = (":4096:8", ":16:8")


def select_device(name: str = "auto") -> torch.device:
    """``auto``: the first visible CUDA device, else the CPU; or an explicit torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available here")
    return device


def device_name(value: str) -> str:
    """``--device`` argument type: ``value`` when it is auto, cpu, cuda or cuda:N."""
    if re.fullmatch(DEVICE_PATTERN, value) is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of auto, cpu, cuda, cuda:N")
    return value


def describe_device(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)`` or ``cpu (8 threads)``, for logs."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} threads)"


def no_gpu_reason() -> str:
    """Why torch sees no CUDA device, in words for an error message."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return "CUDA_VISIBLE_DEVICES is empty"
    return (
        f"this torch is built for CUDA {torch.version.cuda} and finds no usable GPU (none "
        "present, or an NVIDIA driver too old for that CUDA: see nvidia-smi)"
    )


def refuse_cpu_fallback(device: torch.device, requested: str, model: str) -> None:
    """With ``--device auto`` a paper-size model (one gfmtune ships, not ``*_tiny``) does not
    fall back to the CPU: its cell there would take days where a GPU takes minutes, so it
    stops, saying why there is no GPU. Plug-ins, whose size gfmtune cannot tell, fall back."""
    from gfmtune.models.registry import BUILTIN  # not at import: registry builds the models

    paper_size = model in BUILTIN and not model.endswith("_tiny")
    if device.type == "cpu" and requested == "auto" and paper_size:
        raise RuntimeError(
            f"no GPU for model {model!r}: {no_gpu_reason()}; a paper-size model is not trained "
            "on the CPU unless asked (train.device: cpu, or gfmtune train --device cpu)"
        )


def amp_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """Autocast dtype: ``auto`` = bf16 on CUDA and fp32 on CPU; ``bf16``; ``fp32`` (None)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision in ("auto", "bf16"):
        return torch.bfloat16
    raise ValueError(f"unknown precision {precision!r} (auto | bf16 | fp32)")


def configure_backends(device: torch.device, precision: str, deterministic: bool) -> None:
    """Process-wide numerics of a training job, set once before its first CUDA kernel.

    Without autocast (``precision: fp32``, as the authors ran) matrix products and cuDNN
    convolutions run in IEEE fp32, not TF32 (cuDNN's default allows TF32); under autocast
    torch's defaults hold. ``deterministic``: torch's deterministic algorithms wherever one
    exists; an op with none runs as it is, with torch's warning naming it (``warn_only``: four
    of ours on CUDA, docs/performance.md); cuBLAS gets the fixed workspace this requires and
    cuDNN no benchmarking. Otherwise on CUDA cuDNN benchmarks its convolution algorithms once
    per input shape, which a job repeats all along (a pass's last, smaller batch adds one).
    """
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = amp_dtype(device, precision) is not None
    if deterministic and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in DETERMINISTIC_CUBLAS:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = DETERMINISTIC_CUBLAS[0]
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=deterministic)
    log.info(
        "precision %s, TF32 %s, deterministic algorithms %s, cuDNN benchmark %s",
        precision,
        "off" if not torch.backends.cudnn.allow_tf32 else "cuDNN only",
        "on" if deterministic else "off",
        "on" if torch.backends.cudnn.benchmark else "off",
    )


def compile_model(model: nn.Module, has_encoder: bool, backend: str = "inductor") -> None:
    """``torch.compile`` in place (parameters and state-dict keys unchanged): a model with an
    encoder gets its encoder and its ``decode`` compiled apart, so that chunked, checkpointed and
    cached-feature calls run compiled code too; a model without one (U-TAE) is compiled whole.
    ``backend``: torch.compile's (``eager`` traces without generating code, for tests)."""
    if has_encoder:
        model.encoder.compile(backend=backend)
        model.decode = torch.compile(model.decode, backend=backend)
    else:
        model.compile(backend=backend)
    log.info("torch.compile: %s", "encoder and decoder" if has_encoder else "whole model")


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV, Path(tempfile.gettempdir()) / "gfmtune-gpu-locks"))


def shared_folder(folder: Path) -> Path:
    """``folder``, created for every user's jobs if missing: mode 1777 like ``/tmp`` (anyone
    creates lock files there; only its owner removes one), whatever the umask."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:
        return folder
    folder.chmod(0o1777)
    return folder


def open_lock(path: Path) -> int:
    """A read-write descriptor of the GPU lock file ``path``, of mode 0666 whatever the umask,
    so that other users' jobs can lock it too (one of ours made with the umask's mode by an
    older gfmtune is changed). An existing file is opened without ``O_CREAT``, which
    ``fs.protected_regular`` refuses for another user's file in a sticky folder."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        fd = _create_lock(path)
    except PermissionError as err:
        raise lock_permission_error(path, "open") from err
    if os.fstat(fd).st_uid == os.geteuid():
        os.fchmod(fd, 0o666)
    return fd


def _create_lock(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:  # another job created it meanwhile
        return open_lock(path)
    except PermissionError as err:
        raise lock_permission_error(path.parent, "create a lock file in") from err


def lock_permission_error(path: Path, action: str) -> PermissionError:
    """What to do about a GPU lock file or folder this user may not use (another user's,
    made by an older gfmtune with the umask's mode)."""
    try:
        info = path.stat()
        found = f"owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):04o}"
    except OSError as err:
        found = str(err)
    wanted = "1777" if path.is_dir() else "0666"
    return PermissionError(
        f"cannot {action} {path} ({found}): GPU lock files are shared by every user's jobs; "
        f"ask its owner to chmod {wanted} it (or remove it), or set {LOCK_DIR_ENV} to a "
        "folder of your own (then jobs of other users may share your GPUs)"
    )


def make_current(device: torch.device) -> torch.device:
    """``device``, made the current CUDA device (with its index; ``cuda`` is the current one):
    what torch puts on ``cuda`` without an index, the DataLoader's pin-memory thread included,
    then goes there, not to GPU 0. The CPU is returned as it is."""
    if device.type != "cuda":
        return device
    index = torch.cuda.current_device() if device.index is None else device.index
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


@contextmanager
def claimed_device(name: str = "auto", poll_s: float = 5.0, timeout_s: float | None = None
                   ) -> Iterator[torch.device]:  # fmt: skip
    """The device for this job, made current (:func:`make_current`); with ``auto`` and several
    visible GPUs, one claimed exclusively."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name != "auto" or count <= 1 or "CUDA_VISIBLE_DEVICES" in os.environ:
        yield make_current(select_device(name))
        return
    folder = shared_folder(lock_dir())
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        for index in range(count):
            path = folder / f"gpu{index}.lock"
            fd = open_lock(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            log.info("claimed GPU %d of %d (lock %s)", index, count, path)
            try:
                yield make_current(torch.device("cuda", index))
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        if deadline is not None and time.monotonic() > deadline:
            raise RuntimeError(f"no free GPU among {count} after {timeout_s} s (locks in {folder})")
        log.info("all %d GPUs busy; waiting", count)
        time.sleep(poll_s)
