"""A training cell's folder: its files, the state a job saves and resumes from, its best
weights, when a job stops to save (signals, cadence), and the retry policy (``failed.json``).

Cell folder (``metrics.json`` is written last, so a folder without it is never finished)::

    state.pt            training state to resume from (see Resume), saved atomically
    best.pt             best-validation weights (the tensors that were trained), written after
                        the state.pt that holds them (see Best weights)
    history.csv         per epoch: train loss, validation metrics, learning rates, seconds
    confusion_test.csv  20 x 20 test confusion matrix (rows: target, columns: prediction)
    test_patches.npz    per test patch and class: tp, fp, fn (gfmtune.train.patch_counts)
    provenance.json     settings, seed, git revision, package versions, device, time, memory
    metrics.json        test and best-validation metrics, cell, epoch of the best checkpoint
    failed.json         after a failure a retry would repeat (bad input, settings, weights,
                        a diverged training: gfmtune.train.divergence)
    train.lock          held by the job training the cell (names its pid and host)
    tensorboard/        with setting tensorboard: history.csv's rows as event files
    mlflow_run          with setting mlflow: the MLflow run id of the latest attempt

Files are loaded with ``weights_only=True``, so a ``state.pt`` that pickles anything else is
refused without running it. An unreadable ``state.pt`` is set aside (renamed) and the cell
starts over; an unreadable ``best.pt`` invalidates the cell (see :func:`invalidate_cell`).

Resume: ``state.pt`` holds the trained tensors (not a frozen encoder's: those are rebuilt from
the pretrained file), optimizer, scheduler, RNG states and loop state. It is saved at the first
epoch end ``checkpoint_minutes`` after the last save, except after the last epoch, which
``metrics.json`` follows (0: after every epoch, the last included; see also Best weights), and
when SIGTERM (what SLURM sends before a time limit or preemption) or SIGINT arrives: the
handler only sets a flag, the job saves at its next step boundary, mid-epoch, and stops with
:class:`JobStopped` (``gfmtune train`` exits 1; a second Ctrl-C stops at once; during the final
test the job finishes instead). A pass resumed mid-epoch restarts the shuffling generator from
its state at the epoch's start, skips the batches done in the sampler (their data is never
loaded) and continues the crops generator, the RNGs and the running loss where they were: the
result equals an uninterrupted run's (on CPU; docs/performance.md on GPUs).

Best weights: a new best validation score keeps a host copy of the trained tensors (no write:
``best.pt`` of CROMA-large fine-tuned is 0.8 GB). A copy not yet in ``best.pt`` goes into the
next ``state.pt``, then into ``best.pt``; a later ``state.pt`` without one refers to that
``best.pt``. After the last epoch a state is saved whenever a copy is still to be written (not
with ``keep_checkpoint: none``: the test then takes the copy). So ``best.pt`` changes only after
a ``state.pt`` that holds its weights, and a kill at any point resumes to the best weights its
``state.pt`` scored.

Cost: ``wall_seconds`` (and ``gpu_hours``) add up all attempts. ``state.pt`` carries the time
spent up to its save, setup included, so an attempt killed without a save (SIGKILL) loses at most
the time since its last save; ``attempts`` counts the runs that saved a state or finished.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gfmtune.fileio import atomic_write_text, set_aside
from gfmtune.tensorio import CorruptFileError, load_tensors, save_tensors

log = logging.getLogger(__name__)
STATE, BEST, METRICS = "state.pt", "best.pt", "metrics.json"
FAILED = "failed.json"  # the last attempt's error, when a retry would repeat it
LOCK = "train.lock"  # held by the job training the cell (gfmtune.lockfile)
_clock = time.monotonic  # when state.pt is due (tests replace it)


def seed_everything(seed: int) -> None:
    """Seeds Python's, numpy's and torch's global RNGs: a cell's start."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Training:
    """An attempt's training objects: what ``state.pt`` saves besides the loop state."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    order: torch.Generator  # shuffles the training batches
    crops: torch.Generator  # draws random training crops
    best: dict[str, torch.Tensor] | None = None  # host copy of the best weights, when held
    best_written: bool = True  # best.pt holds them (or, with best None, the state's best)


def trained_state(model: torch.nn.Module, encoder_frozen: bool) -> dict[str, torch.Tensor]:
    """A host copy of the model's tensors, without a frozen encoder's (those equal the
    pretrained file)."""
    state = model.state_dict()
    if encoder_frozen:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def load_trained(model: torch.nn.Module, tensors: dict, frozen: bool, path: Path) -> None:
    """Loads the trained tensors saved in ``path`` (a frozen encoder's are absent: the model has
    them from the pretrained file)."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or any(not (frozen and k.startswith("encoder.")) for k in missing):
        raise RuntimeError(f"{path}: does not fit the model")


def invalidate_cell(folder: Path, err: CorruptFileError) -> CorruptFileError:
    """Set aside a cell's unreadable ``best.pt`` with its ``metrics.json`` and ``state.pt``.

    Without ``metrics.json`` (the ``train`` rule's output) Snakemake retrains the cell, from
    scratch since no state is left. Returns the error to raise, saying what to rerun.
    """
    folder = Path(folder)
    moved = [
        set_aside(folder / name, "corrupt" if name == BEST else "invalid").name
        for name in (BEST, METRICS, STATE)
        if (folder / name).exists()
    ]
    return CorruptFileError(
        f"{err}; the cell must be retrained, so {', '.join(moved) or 'nothing'} moved aside: "
        f"rerun snakemake (it retrains cells without {METRICS}) or gfmtune train --out {folder}"
    )


def _cuda_rng(device: torch.device) -> torch.Tensor | None:
    """The RNG state of the job's own GPU (None on CPU)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def save_state(
    out: Path, training: Training, fingerprint: dict, frozen: bool, order: torch.Tensor,
    loop: dict, device: torch.device,
) -> None:  # fmt: skip
    """Saves ``state.pt``, then best weights not yet in ``best.pt`` (Best weights, above);
    ``order``: the shuffling generator's state where training goes on (the epoch's start when
    stopped mid-epoch: the resumed pass redraws the same order)."""
    save_tensors(
        {
            "fingerprint": fingerprint,
            "model": trained_state(training.model, frozen),
            "optimizer": training.optimizer.state_dict(),
            "scheduler": training.scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": _cuda_rng(device),
            "order": order,
            "crops": training.crops.get_state(),
            "loop": loop,
            "best": None if training.best_written else training.best,
        },
        out / STATE,
    )
    write_best(out, training)


def write_best(out: Path, training: Training) -> None:
    """``best.pt`` from the host copy, unless it holds it already."""
    if not training.best_written:
        save_tensors(training.best, out / BEST)
        training.best_written = True


def load_state(
    out: Path, training: Training, fingerprint: dict, frozen: bool, loop: dict,
    device: torch.device,
) -> None:  # fmt: skip
    """Resumes ``training`` and ``loop`` from ``state.pt`` when there is one of this job's
    ``fingerprint``; sets an unreadable one aside and ignores another job's."""
    path = out / STATE
    if not path.exists():
        return
    try:
        # on CPU: loaded onto the GPU, AdamW's step counters would cost host syncs every step
        saved = load_tensors(path, "cpu")
    except CorruptFileError as err:
        log.warning("%s; moved to %s, starting the cell over", err, set_aside(path).name)
        return
    if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
        log.warning("%s: saved state is for another job; starting over", path)
        return
    load_trained(training.model, saved["model"], frozen, path)
    training.optimizer.load_state_dict(saved["optimizer"])
    training.scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"].cpu())
    if saved["cuda_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(saved["cuda_rng"], device)
    training.order.set_state(saved["order"].cpu())
    training.crops.set_state(saved["crops"].cpu())
    training.best = saved.get("best")  # None: best.pt holds the state's best (older states too)
    training.best_written = training.best is None
    loop.update(saved["loop"])
    partial = loop["partial"]
    where = f"in epoch {loop['epoch'] + 1} after step {partial['step']}" if partial else ""
    log.info("%s: resuming %s", path, where or f"after epoch {loop['epoch']}")


def best_weights(
    out: Path, training: Training, device: torch.device, keep: bool
) -> dict[str, torch.Tensor]:
    """The best weights: the host copy, else those of ``best.pt``. A copy not yet in ``best.pt``
    is written here when ``keep`` (``keep_checkpoint`` is not none): the last ``state.pt``
    holds it."""
    if training.best is None:
        try:
            return load_tensors(out / BEST, device)
        except CorruptFileError as err:
            raise invalidate_cell(out, err) from err
    if keep:
        write_best(out, training)
    return training.best


class JobStopped(RuntimeError):
    """A job stopped by SIGTERM or SIGINT after saving its state."""


class StopSignals:
    """While entered (in the main thread, where Python runs handlers), SIGTERM and SIGINT set
    :attr:`signum` and the job stops at its next step; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {
                s: signal.signal(s, self._on) for s in (signal.SIGTERM, signal.SIGINT)
            }
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _on(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def is_set(self) -> bool:
        return self.signum is not None


class Cadence:
    """Whether ``state.pt`` is due: ``minutes`` passed since the last save (0: always)."""

    def __init__(self, minutes: float) -> None:
        self.seconds, self.last = 60.0 * minutes, _clock()

    def due(self) -> bool:
        return _clock() - self.last >= self.seconds

    def saved(self) -> None:
        self.last = _clock()


def refuse_futile_retry(out: Path, attempt: int) -> None:
    """Snakemake's retries are for what a retry can fix (time-outs, preemption, out of
    memory). A retry (``attempt`` > 1) of a cell whose last attempt failed in a way that repeats
    (``failed.json``: bad input, settings or weights, divergence) raises at once; a new
    Snakemake run (attempt 1) clears the record and tries again."""
    marker = Path(out) / FAILED
    if attempt <= 1:
        marker.unlink(missing_ok=True)
        return
    if marker.is_file():
        failed = json.loads(marker.read_text())
        raise RuntimeError(
            f"{out}: not retried: attempt {attempt - 1} failed in a way a retry repeats "
            f"({failed['type']}: {failed['error']}); fix that and rerun snakemake"
        )


def record_failure(out: Path, err: Exception) -> None:
    """Records in ``failed.json`` an error a retry would repeat (see :func:`refuse_futile_retry`)
    when the job had started (its folder exists; bad settings stop before, writing nothing)."""
    if out.is_dir():
        failed = {"type": type(err).__name__, "error": str(err)}
        atomic_write_text(out / FAILED, json.dumps(failed, indent=1) + "\n")
