"""``gfmtune train``: train and evaluate one grid cell, resumably, into its cell folder.

:class:`CellJob` builds the model (the encoder contract is checked before any data are read),
the datasets (through the frozen encoder's feature cache where one applies,
:mod:`gfmtune.train.feature_cache`) and their loaders (:mod:`gfmtune.train.loader`), resumes
from ``state.pt``, runs the epochs (:mod:`gfmtune.train.loop`), saves when due or when stopped,
tests the best weights and writes the cell's files. The folder's format, the saved state, the
best weights and the retry policy are :mod:`gfmtune.train.cell_state`'s.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from gfmtune.data.dataset import PastisZarrDataset, frame_draw
from gfmtune.fileio import atomic_path, atomic_write_text
from gfmtune.lockfile import held
from gfmtune.models.checkpoints import CheckpointError
from gfmtune.models.contract import warn_small_grid
from gfmtune.models.registry import BUILTIN, REGISTRY, ModelSpec, build_model, get_spec
from gfmtune.pastis import CLASS_NAMES, TEST_FOLD, VAL_FOLD
from gfmtune.train import numerics, provenance
from gfmtune.train.cell_state import (
    BEST,
    LOCK,
    METRICS,
    STATE,
    Cadence,
    JobStopped,
    StopSignals,
    Training,
    best_weights,
    load_state,
    load_trained,
    record_failure,
    refuse_futile_retry,
    save_state,
    seed_everything,
    trained_state,
)
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
from gfmtune.train.feature_cache import cached_datasets
from gfmtune.train.loader import SkipFirst, job_loaders, skippable
from gfmtune.train.loop import (
    Progress,
    build_optimizer,
    build_scheduler,
    epoch_line,
    evaluate,
    train_epoch,
)
from gfmtune.train.metrics import metrics_from_confusion
from gfmtune.train.patch_counts import PATCH_FILE, counts_from_confusions, save_patch_counts
from gfmtune.train.resident import resident
from gfmtune.train.settings import TrainSettings
from gfmtune.train.trackers import NO_RESULT, cell_trackers, check_installed

log = logging.getLogger(__name__)


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
        self.cell, self.inputs, self.settings, self.out = cell, inputs, settings, Path(out)
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
        check_installed(settings)  # a tracker's missing package: stop before any work

    def fingerprint(self) -> dict:
        """What a resumable state must match."""
        settings = self.settings.to_dict()
        for key in NO_RESULT:
            del settings[key]
        return {
            "cell": asdict(self.cell),
            "settings": settings,
            "inputs": {k: str(v) for k, v in asdict(self.inputs).items()},
        }

    def _datasets(self) -> list[PastisZarrDataset]:
        """Training (the label split of folds 1-3), validation (fold 4) and test (fold 5), each
        with its own stream of the frame draw (``frame_draw``)."""
        kw = {"norm": self.settings.norm, "nodata": self.settings.nodata}
        kw["scale"] = self.spec.policy.scale  # the model's input scaling (InputPolicy.scale)
        store, ts, split = self.inputs.store, self.inputs.timesteps, self.inputs.label_split
        draw = functools.partial(frame_draw, self.settings.frame_draw, self.cell.seed)
        return [
            PastisZarrDataset.training(store, split, ts, draw=draw("train"), **kw),
            PastisZarrDataset.evaluation(
                store, ts, VAL_FOLD, draw=draw("val"), sample=self.settings.val_patches, **kw
            ),
            PastisZarrDataset.evaluation(store, ts, TEST_FOLD, draw=draw("test"), **kw),
        ]

    def _cached(self, model: torch.nn.Module, datasets: list) -> list:
        """The datasets, a frozen encoder's read from its feature cache where one applies."""
        if not (self.frozen and self.inputs.feature_cache):
            return datasets
        return cached_datasets(
            datasets, model, self.spec, self.inputs.store, self.inputs.timesteps,
            self.inputs.feature_cache, self.settings, self.device, self.amp, self.progress,
        )  # fmt: skip

    def run(self) -> dict:
        """Trains and tests the cell, holding its folder's lock (``train.lock``) throughout:
        a second job on the folder stops at once, naming the process that holds it."""
        numerics.apply(self.settings.cpu_numerics)  # what provenance.json then records
        self.out.mkdir(parents=True, exist_ok=True)
        with held(self.out / LOCK, f"cell folder {self.out}"):
            return self._train()

    def _train(self) -> dict:
        origin = time.time()  # moved back by the time of earlier attempts once resumed
        cell, settings = self.cell, self.settings
        seed_everything(cell.seed)
        model = build_model(  # first: the encoder contract is checked before data are read
            cell.model, weights_dir=self.inputs.weights_dir, encoder_trainable=not self.frozen,
            temporal=settings.temporal, n_frames=cell.timesteps,
        )  # fmt: skip
        datasets = self._datasets()
        if self.spec.has_encoder and cell.model not in BUILTIN:  # a plug-in, on the CPU still
            warn_small_grid(model.encoder, self.spec, datasets[0].reader.frame_shape[-1])
        model = model.to(self.device)
        if self.spec.has_encoder:
            model.set_memory_plan(
                settings.encoder_frames_per_call, settings.activation_checkpointing
            )
        if settings.compile:
            compile_model(model, self.spec.has_encoder)
        cached = self._cached(model, datasets)
        train_dl, val_dl, test_dl, order = job_loaders(
            cached, settings, cell.seed, self.inputs.label_split
        )
        val_dl = resident(val_dl, settings.val_resident, self.device, settings.frame_draw)
        train_ds, val_ds, _ = datasets
        optimizer = build_optimizer(model, self.spec, cell.ft_rate, settings)
        total_iters = settings.epochs * len(train_dl)
        scheduler = build_scheduler(optimizer, total_iters, settings)
        crops = torch.Generator().manual_seed(cell.seed + 1)
        training = Training(model, optimizer, scheduler, order, crops)
        state = {"epoch": 0, "partial": None, "best_score": -math.inf, "best_epoch": None}
        state |= {"history": [], "seconds": 0.0, "attempts": 0}  # time, runs up to the save
        load_state(self.out, training, self.fingerprint(), self.frozen, state, self.device)
        state["attempts"] += 1
        origin -= state["seconds"]
        precision = "fp32" if self.amp is None else f"{self.amp} autocast".removeprefix("torch.")
        log.info(
            "%s: %s on %s (%s), %d training patches, %d steps per epoch, %d epochs", self.out,
            cell, describe_device(self.device), precision, len(train_ds), len(train_dl),
            settings.epochs,
        )  # fmt: skip

        bar = tqdm(
            total=total_iters,
            initial=state["epoch"] * len(train_dl) + (state["partial"] or {}).get("step", 0),
            unit="it",
            desc=f"{cell.model} ft={cell.ft_rate} {cell.label_percent}% t={cell.timesteps}",
            disable=not self.progress,
        )
        skip, cadence = skippable(train_dl), Cadence(settings.checkpoint_minutes)
        watch = LossWatch(self.device)
        trackers = cell_trackers(settings, cell, self.out, state)
        with StopSignals() as stop, trackers as track:
            for epoch in range(state["epoch"], settings.epochs):
                tick = time.time() - (state["partial"] or {}).get("seconds", 0.0)
                epoch_order = order.get_state()  # saved when stopped mid-epoch
                for ds in (train_ds, val_ds):
                    ds.start_pass(epoch)  # this epoch's frame draws
                progress = self._progress(state, skip)
                loss = train_epoch(
                    model, self.spec, train_dl, optimizer, scheduler, self.device, self.amp,
                    crops, on_step=bar.update, auto_memory=settings.auto_memory,
                    progress=progress, stop=stop.is_set, watch=watch,
                )  # fmt: skip
                self._check_finite(training, watch, epoch + 1, progress.steps)
                if stop.is_set():  # mid-epoch (or before validating): resumes at this step
                    now = time.time()
                    state["seconds"] = now - origin
                    state["partial"] = {
                        "step": progress.steps,
                        "scored": progress.scored,
                        "seconds": now - tick,
                        "loss_sum": progress.loss_sum.cpu(),
                    }
                    raise self._stop(training, epoch_order, state, progress.steps, stop.signum)
                state["partial"] = None
                row = self._validate(training, val_dl, epoch, loss, state, bar)
                row["seconds"] = round(time.time() - tick, 3)
                state["history"].append(row)
                log.info("%s", epoch_line(row, settings.epochs))
                track.epoch(row)
                state["epoch"], state["seconds"] = epoch + 1, time.time() - origin
                if stop.is_set():
                    raise self._stop(training, order.get_state(), state, len(train_dl), stop.signum)
                if self._save_due(training, cadence, epoch + 1 == settings.epochs):
                    self._checkpoint(training, order.get_state(), state)
                    cadence.saved()
            bar.close()
            self.model = model
            return track.final(self._finish(training, test_dl, state, origin))

    def _save_due(self, training: Training, cadence: Cadence, last: bool) -> bool:
        """Whether ``state.pt`` is due at an epoch's end: by ``cadence`` (after the last epoch
        only with ``checkpoint_minutes`` 0), and after the last epoch when best weights are
        still to be written to ``best.pt`` (a state that holds them goes first)."""
        if last and not training.best_written and self.settings.keep_checkpoint != "none":
            return True
        return cadence.due() and (not last or cadence.seconds == 0)

    def _progress(self, state: dict, skip: SkipFirst) -> Progress:
        """The training pass so far; resumed mid-epoch, the sampler skips the batches done."""
        partial = state["partial"]
        if partial is None:
            return Progress(torch.zeros((), dtype=torch.float64, device=self.device))
        skip.skip = partial["step"] * self.settings.batch_size
        scored = partial.get("scored", partial["step"])  # states saved before it was counted
        return Progress(partial["loss_sum"].to(self.device), partial["step"], scored)

    def _check_finite(self, training: Training, watch: LossWatch, epoch: int, steps: int) -> None:
        """Stop with :class:`DivergenceError` after a pass with a non-finite loss or weights,
        before anything is validated or saved (:mod:`gfmtune.train.divergence`)."""
        where = f"{self.out}: {self.cell}"
        check_loss(watch, where, epoch)
        check_weights(training.model, training.optimizer, where, epoch, steps)

    def _validate(
        self, training: Training, val_dl: DataLoader, epoch: int, loss: float, state: dict,
        bar: tqdm,
    ) -> dict:  # fmt: skip
        """The epoch's history row; validates when due and keeps a host copy of the weights at
        a new best (written with the next ``state.pt``)."""
        row = {"epoch": epoch + 1, "train_loss": loss}
        row |= {f"lr_{g['name']}": g["lr"] for g in training.optimizer.param_groups}
        if (epoch + 1) % self.settings.val_every == 0 or epoch + 1 == self.settings.epochs:
            val = metrics_from_confusion(
                evaluate(training.model, self.spec, val_dl, self.device, self.amp).numpy()
            )
            row |= {
                "val_miou": val["miou"],
                "val_miou_paper": val["miou_paper"],
                "val_oa": val["oa"],
            }
            score = val[self.settings.select_metric]
            if score > state["best_score"]:
                state |= {"best_score": score, "best_epoch": epoch + 1, "best_val": val}
                training.best = trained_state(training.model, self.frozen)
                training.best_written = False
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{score:.3f}")
        return row

    def _stop(
        self, training: Training, order: torch.Tensor, state: dict, step: int, signum: int
    ) -> JobStopped:
        """Saves ``state.pt`` after ``step`` steps of the epoch under way (or of the last epoch
        done, at its end) for a job stopped by ``signum``; the error that says so."""
        self._checkpoint(training, order, state)
        epoch = state["epoch"] + (state["partial"] is not None)
        return JobStopped(
            f"{self.out}: stopped by {signal.Signals(signum).name}: saved state at epoch {epoch} "
            f"step {step}; rerun to resume"
        )

    def _checkpoint(self, training: Training, order: torch.Tensor, state: dict) -> None:
        """Saves ``state.pt`` (and best weights not yet in ``best.pt``); ``order``: the shuffling
        generator's state where training goes on."""
        fingerprint = self.fingerprint()
        save_state(self.out, training, fingerprint, self.frozen, order, state, self.device)

    def _finish(self, training: Training, test_dl, state: dict, origin: float) -> dict:
        """Test the best checkpoint and write the cell's files; ``origin``: the clock's start,
        earlier attempts included."""
        model = training.model
        keep = self.settings.keep_checkpoint != "none"
        best = best_weights(self.out, training, self.device, keep)
        load_trained(model, best, self.frozen, self.out / BEST)
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
            self.settings.to_dict(), self.cell.seed, self.device, wall, state["attempts"]
        )
        atomic_write_text(self.out / "provenance.json", json.dumps(prov, indent=1) + "\n")
        metrics = {
            "cell": asdict(self.cell),
            "test": test,
            "val_best": state.get("best_val"),
            "best_epoch": state["best_epoch"],
            "epochs": self.settings.epochs,
            "select_metric": self.settings.select_metric,
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
        if self.settings.keep_checkpoint == "none":
            (self.out / BEST).unlink(missing_ok=True)
        return metrics


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


def restart_environment(args: argparse.Namespace) -> dict[str, str]:
    """What this process's environment lacks for the cell's CPU numerics (gfmtune.cli restarts
    the command with it; see gfmtune.train.numerics)."""
    settings = TrainSettings.from_arguments(args.settings, args.settings_json)
    return numerics.missing_environment(settings.cpu_numerics)


def run(args: argparse.Namespace) -> int:
    refuse_futile_retry(args.out, args.attempt)
    try:
        return _run(args)
    except (ValueError, CheckpointError, DivergenceError) as err:  # a retry repeats these
        record_failure(args.out, err)
        raise


def _run(args: argparse.Namespace) -> int:
    ft = None if args.ft_rate in ("none", "", None) else float(args.ft_rate)
    frames = len(str(pd.read_csv(args.timesteps, nrows=1).frames.iloc[0]).split())
    cell = Cell(args.model, ft, args.label_split.stem, frames, args.seed, args.split_name)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = TrainSettings.from_arguments(args.settings, args.settings_json)
    inputs = Inputs(
        args.store, args.label_split, args.timesteps, args.weights_dir, args.feature_cache
    )
    with claimed_device(args.device) as device:
        refuse_cpu_fallback(device, args.device, cell.model)  # CellJob sees the resolved device
        job = CellJob(cell, inputs, settings, args.out, str(device), not args.no_progress)
        metrics = job.run()
    test = metrics["test"]
    log.info(
        "%s: test miou %.4f (paper convention %.4f)", args.out, test["miou"], test["miou_paper"]
    )
    return 0
