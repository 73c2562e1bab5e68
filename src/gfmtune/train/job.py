"""``gfmtune train``: train and evaluate one grid cell, resumably, into its cell folder.

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

Files are loaded with ``weights_only=True``, so a ``state.pt`` that pickles anything else is
refused without running it. An unreadable ``state.pt`` is set aside (renamed) and the cell
starts over; an unreadable ``best.pt`` invalidates the cell (see :func:`invalidate_cell`).

Resume: ``state.pt`` holds the trained tensors (not a frozen encoder's: those are rebuilt from
the pretrained file), optimizer, scheduler, RNG states and loop state. It is saved at the first
epoch end ``checkpoint_minutes`` after the last save, except after the last epoch, which
``metrics.json`` follows (0: after every epoch, the last included; see also Best weights), and
when SIGTERM (what SLURM sends before a time limit or preemption) or SIGINT arrives: the
handler only sets a flag, the job saves at its next step boundary, mid-epoch, and stops with
:class:`JobStopped`
(``gfmtune train`` exits 1; a second Ctrl-C stops at once; during the final test the job
finishes instead). A pass resumed mid-epoch restarts the shuffling generator from its state at
the epoch's start, skips the batches done in the sampler (their data is never loaded) and
continues the crops generator, the RNGs and the running loss where they were: the result
equals an uninterrupted run's (on CPU; docs/performance.md on GPUs).

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

import argparse
import functools
import itertools
import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler, SequentialSampler
from tqdm import tqdm

from gfmtune.data.dataset import PastisZarrDataset, frame_draw
from gfmtune.fileio import atomic_path, atomic_write_text, set_aside
from gfmtune.lockfile import held
from gfmtune.models.checkpoints import CheckpointError
from gfmtune.models.policies import window_corners
from gfmtune.models.registry import REGISTRY, ModelSpec, build_model, get_spec
from gfmtune.pastis import CLASS_NAMES, TEST_FOLD, VAL_FOLD
from gfmtune.tensorio import CorruptFileError, load_tensors, save_tensors
from gfmtune.train import provenance
from gfmtune.train.board import FOLDER as BOARD
from gfmtune.train.board import epoch_board, summary_writer
from gfmtune.train.devices import (
    amp_dtype,
    claimed_device,
    compile_model,
    configure_backends,
    describe_device,
    device_name,
    refuse_cpu_fallback,
    select_device,
)
from gfmtune.train.divergence import DivergenceError, LossWatch, check_loss, check_weights
from gfmtune.train.feature_cache import (
    ALL_FOLDS,
    CachedFeatures,
    FeatureCache,
    cache_key,
    store_content_digest,
)
from gfmtune.train.loop import Progress, build_optimizer, build_scheduler, evaluate, train_epoch
from gfmtune.train.metrics import metrics_from_confusion
from gfmtune.train.patch_counts import PATCH_FILE, counts_from_confusions, save_patch_counts
from gfmtune.train.resident import resident
from gfmtune.train.settings import TrainSettings

log = logging.getLogger(__name__)
STATE, BEST, METRICS = "state.pt", "best.pt", "metrics.json"
FAILED = "failed.json"  # the last attempt's error, when a retry would repeat it
LOCK = "train.lock"  # held by the job training the cell (gfmtune.lockfile)
#: ``workers: auto`` starts at most this many: the 16 CPUs the SLURM profile and the train rule
#: ask for, but the main process's. At t = 35 one worker delivers 20-29 samples/s, so 15 bound a
#: step of batch 8 at 18-27 ms (8 bound it at 35-50 ms, slower than frozen DINO's ~30 ms of
#: compute). Each holds PREFETCH batches in /dev/shm (docs/performance.md: Data path).
MAX_AUTO_WORKERS = 15
#: Batches each worker prepares ahead (DataLoader ``prefetch_factor``).
PREFETCH = 2
_clock = time.monotonic  # when state.pt is due (tests replace it)


@dataclass(frozen=True)
class Cell:
    """One point of the study's grid."""

    model: str
    ft_rate: float | None  # None for models trained from scratch (U-TAE)
    label_percent: str
    timesteps: int
    seed: int = 0
    split: str = "main"  # the run's label split, or a manifests.split_variants name


@dataclass(frozen=True)
class Inputs:
    store: Path
    label_split: Path
    timesteps: Path
    weights_dir: Path | None = None
    feature_cache: Path | None = None  # folder of frozen-encoder feature caches (None: off)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def _loader(
    ds: PastisZarrDataset,
    batch: int,
    s: TrainSettings,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    persistent: bool = True,
) -> DataLoader:
    """A loader of ``ds``: shuffled by ``generator`` alone (starting workers draws their seeds
    from a private generator, not from it or the global RNG, so results do not depend on
    workers), workers kept alive across epochs unless ``persistent`` is false, pinned batches
    on CUDA."""
    workers = loader_workers(s.workers)
    order = RandomSampler(ds, generator=generator) if shuffle else SequentialSampler(ds)
    return DataLoader(
        ds,
        batch_size=batch,
        sampler=order,
        generator=torch.Generator().manual_seed(0),  # worker seeds only
        drop_last=drop_last,
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=PREFETCH if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
    )


def _trained_state(model: torch.nn.Module, encoder_frozen: bool) -> dict[str, torch.Tensor]:
    """A host copy of the model's tensors, without a frozen encoder's (those equal the
    pretrained file)."""
    state = model.state_dict()
    if encoder_frozen:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _load_trained(model: torch.nn.Module, tensors: dict, frozen: bool, path: Path) -> None:
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


class JobStopped(RuntimeError):
    """A job stopped by SIGTERM or SIGINT after saving its state."""


class _StopSignals:
    """While entered (in the main thread, where Python runs handlers), SIGTERM and SIGINT set
    :attr:`signum` and the job stops at its next step; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> _StopSignals:
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


class _Cadence:
    """Whether ``state.pt`` is due: ``minutes`` passed since the last save (0: always)."""

    def __init__(self, minutes: float) -> None:
        self.seconds, self.last = 60.0 * minutes, _clock()

    def due(self) -> bool:
        return _clock() - self.last >= self.seconds

    def saved(self) -> None:
        self.last = _clock()


class _SkipFirst(Sampler):
    """A sampler whose next pass leaves out the first :attr:`skip` indices of ``inner``'s."""

    def __init__(self, inner: Sampler) -> None:
        self.inner, self.skip = inner, 0

    def __iter__(self) -> Iterator:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.inner), skip, None)

    def __len__(self) -> int:
        return len(self.inner)


def _skippable(loader: DataLoader) -> _SkipFirst:
    """Wraps the sampler of ``loader``'s batches (consecutive runs of its indices), so that a
    pass resumed mid-epoch skips the batches done without loading their data."""
    batches = loader.batch_sampler
    batches.sampler = _SkipFirst(batches.sampler)
    return batches.sampler


@dataclass
class _Training:
    """An attempt's training objects: what ``state.pt`` saves besides the loop state."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    order: torch.Generator  # shuffles the training batches
    crops: torch.Generator  # draws random training crops
    best: dict[str, torch.Tensor] | None = None  # host copy of the best weights, when held
    best_written: bool = True  # best.pt holds them (or, with best None, the state's best)


class CellJob:
    """Trains one cell; :meth:`run` resumes from ``state.pt`` when it fits this job."""

    def __init__(
        self,
        cell: Cell,
        inputs: Inputs,
        settings: TrainSettings,
        out: Path,
        device: str = "auto",
        progress: bool = True,
    ) -> None:
        self.cell, self.inputs, self.s, self.out = cell, inputs, settings, Path(out)
        self.spec: ModelSpec = get_spec(cell.model, eval_resize=settings.dino_eval_resize)
        if self.spec.has_encoder and cell.ft_rate is None:
            raise ValueError(f"model {cell.model!r} needs an FT-Rate")
        if not self.spec.has_encoder and cell.ft_rate is not None:
            raise ValueError(f"model {cell.model!r} trains from scratch: it has no FT-Rate")
        if self.spec.checkpoint is not None and inputs.weights_dir is None:
            raise ValueError(
                f"model {cell.model!r} starts from {self.spec.checkpoint.filename}: pass its "
                "folder (--weights-dir); the tiny models train without pretrained weights"
            )
        self.device = select_device(device)
        refuse_cpu_fallback(self.device, device, cell.model)
        self.amp = amp_dtype(self.device, settings.precision)
        configure_backends(self.device, settings.precision, settings.deterministic)
        self.progress = progress
        self.frozen = self.spec.has_encoder and not cell.ft_rate
        if settings.tensorboard:
            summary_writer()  # missing package: stop before any work

    def fingerprint(self) -> dict:
        """What a resumable state must match."""
        settings = self.s.to_dict()
        del settings["checkpoint_minutes"], settings["tensorboard"]  # change no result
        return {
            "cell": asdict(self.cell),
            "settings": settings,
            "inputs": {k: str(v) for k, v in asdict(self.inputs).items()},
        }

    def _datasets(self) -> list[PastisZarrDataset]:
        """Training (the label split of folds 1-3), validation (fold 4) and test (fold 5), each
        with its own stream of the frame draw (``frame_draw``)."""
        kw = {"norm": self.s.norm, "nodata": self.s.nodata}
        store, ts, split = self.inputs.store, self.inputs.timesteps, self.inputs.label_split
        draw = functools.partial(frame_draw, self.s.frame_draw, self.cell.seed)
        return [
            PastisZarrDataset.training(store, split, ts, draw=draw("train"), **kw),
            PastisZarrDataset.evaluation(
                store, ts, VAL_FOLD, draw=draw("val"), sample=self.s.val_patches, **kw
            ),
            PastisZarrDataset.evaluation(store, ts, TEST_FOLD, draw=draw("test"), **kw),
        ]

    def _cached(self, model: torch.nn.Module, datasets: list) -> list:
        """The datasets with cached encoder features where a cache applies to a frozen encoder:
        all three with a fixed input (``feature_cache``); validation and test when only the
        training crops are random (CROMA's windows, ``eval_cache``). Never with a frame draw."""
        fixed = self.spec.policy.deterministic_train_input
        wanted = self.s.feature_cache if fixed else self.s.eval_cache
        if not (self.frozen and wanted and self.inputs.feature_cache):
            return datasets
        if self.s.frame_draw != "none":
            log.info(
                "no feature cache: frame_draw %s draws frames at every load", self.s.frame_draw
            )
            return datasets
        digest = store_content_digest(self.inputs.store)
        if digest is None:
            log.warning(
                "%s: the store predates content digests, so a feature cache cannot tell its "
                "data from another's; training without the cache: rebuild the store "
                "(gfmtune store) to use it",
                self.inputs.store,
            )
            return datasets
        every = PastisZarrDataset(
            self.inputs.store,
            self.inputs.timesteps,
            ALL_FOLDS if fixed else (VAL_FOLD, TEST_FOLD),
            norm=self.s.norm,
            nodata=self.s.nodata,
        )
        patch = every.reader.label(int(every.positions[0])).shape  # the store's patch size
        windows = None if fixed else window_corners(patch, self.spec.policy.size)
        key = cache_key(
            self.spec,
            model,
            digest,
            self.inputs.timesteps,
            self.s.norm,
            self.s.nodata,
            self.amp,
            windows,
        )
        cache = FeatureCache(self.inputs.feature_cache, key)
        cache.build(model, self.spec, every, self.device, self.amp, self.progress)
        live = 0 if fixed else 1  # the datasets that keep their images: CROMA's training crops
        log.info(
            "%s from cached encoder features in %s",
            "training" if fixed else "evaluation",
            cache.dir,
        )
        return datasets[:live] + [CachedFeatures(ds, cache) for ds in datasets[live:]]

    def _loaders(
        self, datasets: list
    ) -> tuple[DataLoader, DataLoader, DataLoader, torch.Generator]:
        train_ds, val_ds, test_ds = datasets
        order = torch.Generator().manual_seed(self.cell.seed)
        train = _loader(train_ds, self.s.batch_size, self.s, True, order, self.s.drop_last)
        if len(train) == 0:
            raise ValueError(
                f"{self.inputs.label_split}: {len(train_ds)} training patches make no batch of "
                f"{self.s.batch_size} with drop_last; lower train.batch_size or set drop_last false"
            )
        if len(train_ds) < self.s.batch_size:
            log.warning(
                "%s: %d training patches, fewer than one batch of %d: each epoch is one step "
                "on a smaller batch",
                self.inputs.label_split,
                len(train_ds),
                self.s.batch_size,
            )
        evals = [_loader(ds, self.s.eval_batch_size, self.s, False) for ds in (val_ds, test_ds)]
        return train, evals[0], evals[1], order  # order: the shuffling generator

    def run(self) -> dict:
        """Trains and tests the cell, holding its folder's lock (``train.lock``) throughout:
        a second job on the folder stops at once, naming the process that holds it."""
        self.out.mkdir(parents=True, exist_ok=True)
        with held(self.out / LOCK, f"cell folder {self.out}"):
            return self._train()

    def _train(self) -> dict:
        origin = time.time()  # moved back by the time of earlier attempts once resumed
        seed_everything(self.cell.seed)
        model = build_model(  # first: the encoder contract is checked before data are read
            self.cell.model,
            weights_dir=self.inputs.weights_dir,
            encoder_trainable=not self.frozen,
            temporal=self.s.temporal,
            n_frames=self.cell.timesteps,
        ).to(self.device)
        datasets = self._datasets()
        if self.spec.has_encoder:
            model.set_memory_plan(self.s.encoder_frames_per_call, self.s.activation_checkpointing)
        if self.s.compile:
            compile_model(model, self.spec.has_encoder)
        train_dl, val_dl, test_dl, order = self._loaders(self._cached(model, datasets))
        val_dl = resident(val_dl, self.s.val_resident, self.device, self.s.frame_draw)
        train_ds, val_ds, _ = datasets
        optimizer = build_optimizer(model, self.spec, self.cell.ft_rate, self.s)
        total_iters = self.s.epochs * len(train_dl)
        scheduler = build_scheduler(optimizer, total_iters, self.s)
        crops = torch.Generator().manual_seed(self.cell.seed + 1)
        t = _Training(model, optimizer, scheduler, order, crops)
        state = {"epoch": 0, "partial": None, "best_score": -math.inf, "best_epoch": None}
        state |= {"history": [], "seconds": 0.0, "attempts": 0}  # time, runs up to the save
        self._resume(t, state)
        state["attempts"] += 1
        origin -= state["seconds"]
        log.info(
            "%s: %s on %s (%s), %d training patches, %d steps per epoch, %d epochs",
            self.out,
            self.cell,
            describe_device(self.device),
            "fp32" if self.amp is None else f"{self.amp} autocast".removeprefix("torch."),
            len(train_ds),
            len(train_dl),
            self.s.epochs,
        )

        bar = tqdm(
            total=total_iters,
            initial=state["epoch"] * len(train_dl) + (state["partial"] or {}).get("step", 0),
            unit="it",
            desc=f"{self.cell.model} ft={self.cell.ft_rate} {self.cell.label_percent}% "
            f"t={self.cell.timesteps}",
            disable=not self.progress,
        )
        skip, cadence = _skippable(train_dl), _Cadence(self.s.checkpoint_minutes)
        watch = LossWatch(self.device)
        board_dir = self.out / BOARD if self.s.tensorboard else None
        with _StopSignals() as stop, epoch_board(board_dir, state["epoch"]) as board:
            for epoch in range(state["epoch"], self.s.epochs):
                tick = time.time() - (state["partial"] or {}).get("seconds", 0.0)
                epoch_order = order.get_state()  # saved when stopped mid-epoch
                for ds in (train_ds, val_ds):
                    ds.start_pass(epoch)  # this epoch's frame draws
                progress = self._progress(state, skip)
                loss = train_epoch(
                    model,
                    self.spec,
                    train_dl,
                    optimizer,
                    scheduler,
                    self.device,
                    self.amp,
                    crops,
                    on_step=bar.update,
                    auto_memory=self.s.auto_memory,
                    progress=progress,
                    stop=stop.is_set,
                    watch=watch,
                )
                self._check_finite(t, watch, epoch + 1, progress.steps)
                if stop.is_set():  # mid-epoch (or before validating): resumes at this step
                    now = time.time()
                    state["seconds"] = now - origin
                    state["partial"] = {
                        "step": progress.steps,
                        "scored": progress.scored,
                        "seconds": now - tick,
                        "loss_sum": progress.loss_sum.cpu(),
                    }
                    raise self._stop(t, epoch_order, state, progress.steps, stop.signum)
                state["partial"] = None
                row = self._validate(t, val_dl, epoch, loss, state, bar)
                row["seconds"] = round(time.time() - tick, 3)
                state["history"].append(row)
                log.info("%s", epoch_line(row, self.s.epochs))
                board(row)
                state["epoch"], state["seconds"] = epoch + 1, time.time() - origin
                if stop.is_set():
                    raise self._stop(t, order.get_state(), state, len(train_dl), stop.signum)
                if self._save_due(t, cadence, epoch + 1 == self.s.epochs):
                    self._checkpoint(t, order.get_state(), state)
                    cadence.saved()
            bar.close()
            self.model = model
            return self._finish(t, test_dl, state, origin)

    def _save_due(self, t: _Training, cadence: _Cadence, last: bool) -> bool:
        """Whether ``state.pt`` is due at an epoch's end: by ``cadence`` (after the last epoch
        only with ``checkpoint_minutes`` 0), and after the last epoch when best weights are
        still to be written to ``best.pt`` (a state that holds them goes first)."""
        if last and not t.best_written and self.s.keep_checkpoint != "none":
            return True
        return cadence.due() and (not last or cadence.seconds == 0)

    def _progress(self, state: dict, skip: _SkipFirst) -> Progress:
        """The training pass so far; resumed mid-epoch, the sampler skips the batches done."""
        partial = state["partial"]
        if partial is None:
            return Progress(torch.zeros((), dtype=torch.float64, device=self.device))
        skip.skip = partial["step"] * self.s.batch_size
        scored = partial.get("scored", partial["step"])  # states saved before it was counted
        return Progress(partial["loss_sum"].to(self.device), partial["step"], scored)

    def _check_finite(self, t: _Training, watch: LossWatch, epoch: int, steps: int) -> None:
        """Stop with :class:`DivergenceError` after a pass with a non-finite loss or weights,
        before anything is validated or saved (:mod:`gfmtune.train.divergence`)."""
        where = f"{self.out}: {self.cell}"
        check_loss(watch, where, epoch)
        check_weights(t.model, t.optimizer, where, epoch, steps)

    def _validate(
        self, t: _Training, val_dl: DataLoader, epoch: int, loss: float, state: dict, bar: tqdm
    ) -> dict:
        """The epoch's history row; validates when due and keeps a host copy of the weights at
        a new best (written with the next ``state.pt``)."""
        row = {"epoch": epoch + 1, "train_loss": loss}
        row |= {f"lr_{g['name']}": g["lr"] for g in t.optimizer.param_groups}
        if (epoch + 1) % self.s.val_every == 0 or epoch + 1 == self.s.epochs:
            val = metrics_from_confusion(
                evaluate(t.model, self.spec, val_dl, self.device, self.amp).numpy()
            )
            row |= {
                "val_miou": val["miou"],
                "val_miou_paper": val["miou_paper"],
                "val_oa": val["oa"],
            }
            score = val[self.s.select_metric]
            if score > state["best_score"]:
                state |= {"best_score": score, "best_epoch": epoch + 1, "best_val": val}
                t.best, t.best_written = _trained_state(t.model, self.frozen), False
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{score:.3f}")
        return row

    def _stop(
        self, t: _Training, order: torch.Tensor, state: dict, step: int, signum: int
    ) -> JobStopped:
        """Saves ``state.pt`` after ``step`` steps of the epoch under way (or of the last epoch
        done, at its end) for a job stopped by ``signum``; the error that says so."""
        self._checkpoint(t, order, state)
        epoch = state["epoch"] + (state["partial"] is not None)
        return JobStopped(
            f"{self.out}: stopped by {signal.Signals(signum).name}: saved state at epoch {epoch} "
            f"step {step}; rerun to resume"
        )

    def _checkpoint(self, t: _Training, order: torch.Tensor, state: dict) -> None:
        """Saves ``state.pt``, then best weights not yet in ``best.pt`` (see the module's
        docstring: Best weights); ``order``: the shuffling generator's state where training goes
        on (the epoch's start when stopped mid-epoch: the resumed pass redraws the same order)."""
        save_tensors(
            {
                "fingerprint": self.fingerprint(),
                "model": _trained_state(t.model, self.frozen),
                "optimizer": t.optimizer.state_dict(),
                "scheduler": t.scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": _cuda_rng(self.device),
                "order": order,
                "crops": t.crops.get_state(),
                "loop": state,
                "best": None if t.best_written else t.best,
            },
            self.out / STATE,
        )
        self._write_best(t)

    def _write_best(self, t: _Training) -> None:
        """``best.pt`` from the host copy, unless it holds it already."""
        if not t.best_written:
            save_tensors(t.best, self.out / BEST)
            t.best_written = True

    def _resume(self, t: _Training, state: dict) -> None:
        path = self.out / STATE
        if not path.exists():
            return
        try:
            # on CPU: loaded onto the GPU, AdamW's step counters would cost host syncs every step
            saved = load_tensors(path, "cpu")
        except CorruptFileError as err:
            log.warning("%s; moved to %s, starting the cell over", err, set_aside(path).name)
            return
        if not isinstance(saved, dict) or saved.get("fingerprint") != self.fingerprint():
            log.warning("%s: saved state is for another job; starting over", path)
            return
        _load_trained(t.model, saved["model"], self.frozen, path)
        t.optimizer.load_state_dict(saved["optimizer"])
        t.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"].cpu())
        if saved["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        t.order.set_state(saved["order"].cpu())
        t.crops.set_state(saved["crops"].cpu())
        t.best = saved.get("best")  # None: best.pt holds the state's best (older states too)
        t.best_written = t.best is None
        state.update(saved["loop"])
        partial = state["partial"]
        where = f"in epoch {state['epoch'] + 1} after step {partial['step']}" if partial else ""
        log.info("%s: resuming %s", path, where or f"after epoch {state['epoch']}")

    def _best_weights(self, t: _Training) -> dict[str, torch.Tensor]:
        """The best weights: the host copy, else those of ``best.pt``. A copy not yet in
        ``best.pt`` is written here (not with ``keep_checkpoint: none``): the last ``state.pt``
        holds it (:meth:`_save_due`)."""
        if t.best is None:
            try:
                return load_tensors(self.out / BEST, self.device)
            except CorruptFileError as err:
                raise invalidate_cell(self.out, err) from err
        if self.s.keep_checkpoint != "none":
            self._write_best(t)
        return t.best

    def _finish(self, t: _Training, test_dl, state: dict, origin: float) -> dict:
        """Test the best checkpoint and write the cell's files; ``origin``: the clock's start,
        earlier attempts included."""
        model = t.model
        _load_trained(model, self._best_weights(t), self.frozen, self.out / BEST)
        tested = evaluate(model, self.spec, test_dl, self.device, self.amp, per_sample=True)
        confusion = tested.numpy()
        test = metrics_from_confusion(confusion)
        with atomic_path(self.out / "confusion_test.csv") as tmp:
            pd.DataFrame(confusion, index=CLASS_NAMES, columns=CLASS_NAMES).to_csv(tmp)
        test_patches = getattr(test_dl.dataset, "base", test_dl.dataset).patch_ids
        counts = counts_from_confusions(test_patches, tested.per_sample_numpy())
        save_patch_counts(counts, self.out / PATCH_FILE)
        with atomic_path(self.out / "history.csv") as tmp:
            pd.DataFrame(state["history"]).to_csv(tmp, index=False)
        wall = time.time() - origin
        prov = provenance.collect(
            self.s.to_dict(), self.cell.seed, self.device, wall, state["attempts"]
        )
        atomic_write_text(self.out / "provenance.json", json.dumps(prov, indent=1) + "\n")
        metrics = {
            "cell": asdict(self.cell),
            "test": test,
            "val_best": state.get("best_val"),
            "best_epoch": state["best_epoch"],
            "epochs": self.s.epochs,
            "select_metric": self.s.select_metric,
            "conventions": {
                "miou": "mean IoU over classes 0-18 (background included)",
                "miou_paper": "mean over all 20 classes, void included as 0",
            },
            "wall_seconds": prov["wall_seconds"],
            "gpu_hours": prov["gpu_hours"],
            "attempts": state["attempts"],
        }
        atomic_write_text(self.out / METRICS, json.dumps(metrics, indent=1) + "\n")
        (self.out / STATE).unlink(missing_ok=True)
        if self.s.keep_checkpoint == "none":
            (self.out / BEST).unlink(missing_ok=True)
        return metrics


def epoch_line(row: dict, epochs: int) -> str:
    """One log line of a history row: ``epoch 3/80: loss 1.234, val miou_paper 12.34 %, ...``."""
    parts = [f"epoch {row['epoch']}/{epochs}: loss {row['train_loss']:.4f}"]
    parts += [
        f"val {key.removeprefix('val_')} {100 * row[key]:.2f} %"
        for key in ("val_miou_paper", "val_miou", "val_oa")
        if key in row
    ]
    parts += [f"{k} {v:.3g}" for k, v in row.items() if k.startswith("lr_")]
    return ", ".join([*parts, f"{row['seconds']:.1f} s"])


def _cuda_rng(device: torch.device) -> torch.Tensor | None:
    """The RNG state of the job's own GPU (None on CPU)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, required=True, help="s2.zarr store")
    parser.add_argument("--label-split", type=Path, required=True, help="label-split manifest CSV")
    parser.add_argument("--timesteps", type=Path, required=True, help="timestep manifest CSV")
    parser.add_argument(
        "--model", required=True, choices=sorted(REGISTRY), help="model (registry name)"
    )
    parser.add_argument("--ft-rate", default="none", help="encoder lr / decoder lr, or none")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cell")
    parser.add_argument(
        "--split-name", default="main", help="the label split's name: main, or a split variant's"
    )
    parser.add_argument("--settings", type=Path, help="JSON file of training settings")
    defaults = ", ".join(f"{k}={v}" for k, v in TrainSettings().to_dict().items())
    parser.add_argument(
        "--settings-json",
        help=f"training settings as a JSON string; keys and their defaults: {defaults}",
    )
    parser.add_argument("--weights-dir", type=Path, help="folder of pretrained checkpoints")
    parser.add_argument(
        "--device", default="auto", type=device_name, help="auto | cpu | cuda | cuda:N"
    )
    parser.add_argument("--feature-cache", type=Path, help="folder for frozen-encoder features")
    parser.add_argument("--out", type=Path, required=True, help="cell folder")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--attempt",
        type=int,
        default=1,
        help="Snakemake's attempt: a retry after a failure a retry repeats stops at once",
    )


def not_failed_before(out: Path, attempt: int) -> None:
    """Snakemake's retries are for what a retry can fix (time-outs, preemption, out of
    memory). A retry (``attempt`` > 1) of a cell whose last attempt failed in a way that repeats
    (``failed.json``: bad input, settings or weights, divergence) stops at once; a new Snakemake run
    (attempt 1) tries again."""
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


def run(args: argparse.Namespace) -> int:
    not_failed_before(args.out, args.attempt)
    try:
        return _run(args)
    except (ValueError, CheckpointError, DivergenceError) as err:  # a retry repeats these
        if args.out.is_dir():  # the job had started (bad settings stop before, writing nothing)
            failed = {"type": type(err).__name__, "error": str(err)}
            atomic_write_text(args.out / FAILED, json.dumps(failed, indent=1) + "\n")
        raise


def _run(args: argparse.Namespace) -> int:
    ft = None if args.ft_rate in ("none", "", None) else float(args.ft_rate)
    manifest = pd.read_csv(args.timesteps, nrows=1)
    cell = Cell(
        args.model,
        ft,
        args.label_split.stem,
        len(str(manifest.frames.iloc[0]).split()),
        args.seed,
        args.split_name,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.settings:
        settings = TrainSettings.from_json(args.settings)
    else:
        settings = TrainSettings.from_mapping(json.loads(args.settings_json or "{}"))
    inputs = Inputs(
        args.store, args.label_split, args.timesteps, args.weights_dir, args.feature_cache
    )
    with claimed_device(args.device) as device:
        refuse_cpu_fallback(device, args.device, cell.model)  # CellJob sees the resolved device
        job = CellJob(cell, inputs, settings, args.out, str(device), not args.no_progress)
        metrics = job.run()
    log.info(
        "%s: test miou %.4f (paper convention %.4f)",
        args.out,
        metrics["test"]["miou"],
        metrics["test"]["miou_paper"],
    )
    return 0
