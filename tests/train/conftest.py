"""A small synthetic store (32 px, so CROMA-tiny's 24 px crops fit), its manifests, and helpers
that run, interrupt or kill a training job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gfmtune.data.manifests import write_label_splits, write_timesteps
from gfmtune.data.store import convert
from gfmtune.data.synthetic import SyntheticSpec, write_synthetic_pastis
from gfmtune.train import job
from gfmtune.train.job import Cell, Inputs
from gfmtune.train.settings import TrainSettings

# checkpoint_minutes 0: state.pt after every epoch, as the kill and resume tests need
FAST = TrainSettings(epochs=3, batch_size=4, workers=0, checkpoint_minutes=0)


@pytest.fixture(scope="session")
def train_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with raw/ (the PASTIS folder), s2.zarr, label_split/{10,100}.csv and
    timesteps/{1,6}.csv."""
    base = tmp_path_factory.mktemp("train_data")
    root = write_synthetic_pastis(base / "raw", SyntheticSpec(40, 32, (9, 14), seed=4))
    convert(root, base / "s2.zarr", threads=2, progress=False)
    write_label_splits(base / "s2.zarr", base / "label_split", [10, 100], "paper")
    write_timesteps(base / "s2.zarr", base / "timesteps", [1, 6], "paper")
    return base


def inputs(base: Path, percent: str = "100", t: int = 6) -> Inputs:
    return Inputs(base / "s2.zarr", base / "label_split" / f"{percent}.csv",
                  base / "timesteps" / f"{t}.csv")  # fmt: skip


def train_argv(data: Inputs, cell: Cell, settings: Path, out: Path) -> list[str]:
    """``gfmtune train`` arguments for ``cell`` on ``data`` with a settings JSON file."""
    ft = "none" if cell.ft_rate is None else str(cell.ft_rate)
    argv = ["train", "--store", str(data.store), "--label-split", str(data.label_split),
            "--timesteps", str(data.timesteps), "--model", cell.model, "--ft-rate", ft,
            "--seed", str(cell.seed), "--settings", str(settings), "--out", str(out),
            "--no-progress"]  # fmt: skip
    return argv + (["--feature-cache", str(data.feature_cache)] if data.feature_cache else [])


SLOW_TRAIN = """
import sys, time
import gfmtune.train.job as job
epoch = job.train_epoch
def slow(*a, **k):
    time.sleep(1.0)
    return epoch(*a, **k)
job.train_epoch = slow
from gfmtune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def kill_mid_training(argv: list[str], out: Path) -> None:
    """Run ``gfmtune train argv`` (epochs slowed by 1 s) in a subprocess; SIGKILL it inside the
    epoch after its first saved state."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, *argv])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "state.pt").exists():
        time.sleep(0.05)
    time.sleep(0.3)  # inside the second epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


class Interrupted(Exception):
    """Stands for a kill in :func:`interrupt_after`."""


def interrupt_after(monkeypatch: pytest.MonkeyPatch, epochs: int, pause_s: float = 0.0) -> None:
    """Make training epochs last ``pause_s`` more and the next one after ``epochs`` of them
    raise :class:`Interrupted` (``monkeypatch.undo()`` restores training)."""
    train_epoch, done = job.train_epoch, []

    def epoch(*args, **kwargs) -> float:
        if len(done) == epochs:
            raise Interrupted(f"stopped after {epochs} epoch(s)")
        done.append(True)
        time.sleep(pause_s)
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(job, "train_epoch", epoch)


def out_of_memory_once(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    """``owner.name`` raises ``torch.OutOfMemoryError`` at its first call, as CUDA would; the
    returned list records the samples of every call (its first argument's, or of the first
    tensor of a list: cached encoder levels)."""
    real, sizes = getattr(owner, name), []

    def call(first, *args, **kwargs):
        sizes.append(len(first[0] if isinstance(first, list) else first))
        if len(sizes) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(first, *args, **kwargs)

    monkeypatch.setattr(owner, name, call)
    return sizes
