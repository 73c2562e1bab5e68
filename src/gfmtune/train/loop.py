"""The training and evaluation loops of one cell (the paper's protocol: docs/protocol.md,
"Optimisation" and "Evaluation and metric").

AdamW with two parameter groups (decoder at ``lr``, encoder at FT-Rate x ``lr``; a frozen
encoder is in no group and runs without autograd), MultiStepLR stepped per iteration at
fractions of all iterations, cross-entropy ignoring the void class. A batch without a labelled
pixel contributes no loss (not cross-entropy's NaN of an empty mean) and no update; a
non-finite loss stops training (:mod:`gfmtune.train.divergence`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from gfmtune.data.dataset import model_frames
from gfmtune.models.policies import Forward
from gfmtune.models.registry import ModelSpec
from gfmtune.pastis import VOID_CLASS
from gfmtune.train.divergence import LossWatch
from gfmtune.train.metrics import ConfusionMatrix
from gfmtune.train.settings import TrainSettings

log = logging.getLogger(__name__)
R = TypeVar("R")


def is_encoder_param(name: str) -> bool:
    return name.startswith("encoder.")


def build_optimizer(
    model: nn.Module, spec: ModelSpec, ft_rate: float | None, s: TrainSettings
) -> torch.optim.AdamW:
    """AdamW over the decoder group and, when FT-Rate > 0, the encoder group; fused (one kernel
    for all parameters) where torch has it, equal to the foreach form to rounding."""
    if not spec.has_encoder:  # U-TAE: one group, everything at lr
        groups = [{"name": "decoder", "params": list(model.parameters()), "lr": s.lr}]
    else:
        named = list(model.named_parameters())
        groups = [
            {
                "name": "decoder",
                "lr": s.lr,
                "params": [p for n, p in named if not is_encoder_param(n)],
            }
        ]
        if ft_rate:
            groups.append(
                {
                    "name": "encoder",
                    "lr": ft_rate * s.lr,
                    "params": [p for n, p in named if is_encoder_param(n)],
                }
            )
    devices = {p.device.type for group in groups for p in group["params"]}
    fused = devices <= {"cuda", "cpu"}  # torch's fused AdamW kernels (on CPU since 2.4)
    log.info("AdamW: %s", "fused" if fused else "torch's default implementation")
    return torch.optim.AdamW(
        groups, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay, fused=fused or None
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_iters: int, s: TrainSettings
) -> torch.optim.lr_scheduler.MultiStepLR:
    milestones = [int(f * total_iters) for f in s.milestones]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=s.gamma)


def forward_fn(model: nn.Module, spec: ModelSpec, days: torch.Tensor) -> Forward:
    """``(x, output_size) -> logits`` for the policies; U-TAE takes the day offsets instead."""
    if spec.has_encoder:
        return lambda x, size: model(x, size)
    return lambda x, size: model(x, days)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


Inputs = torch.Tensor | list[torch.Tensor]  # frames (B, T, C, H, W) or cached encoder levels


def _batches(loader: DataLoader, device: torch.device) -> Iterator[tuple[Inputs, ...]]:
    """(inputs, days, labels) on ``device``; int16 frames normalised there by the loader's
    dataset's normaliser (:func:`~gfmtune.data.dataset.model_frames`)."""
    for x, days, y, _ in _labelled_batches(loader, device):
        yield x, days, y


def _labelled_batches(loader: DataLoader, device: torch.device) -> Iterator[tuple]:
    """:func:`_batches` with whether each batch holds a labelled pixel, told from its labels
    before they leave the host (so without waiting for the device)."""
    normalise = getattr(getattr(loader, "dataset", None), "normalise", None)
    for batch in loader:
        if "features" in batch:
            x = [level.to(device, non_blocking=True) for level in batch["features"]]
        else:
            x = model_frames(batch["image"], normalise, device)
        labels = batch["label"]
        labelled = labels.device.type != "cpu" or bool((labels != VOID_CLASS).any())
        yield (
            x,
            batch["days"].to(device, non_blocking=True),
            labels.to(device, non_blocking=True),
            labelled,
        )


def _logits(
    model: nn.Module,
    spec: ModelSpec,
    x: Inputs,
    days: torch.Tensor,
    size: tuple[int, int],
    train: bool,
) -> torch.Tensor:
    """Logits of frames through the input policy, or of cached encoder levels directly."""
    if isinstance(x, list):
        return model.decode(x, size) if train else spec.policy.eval_decoded(model.decode, x, size)
    forward = forward_fn(model, spec, days)
    return spec.policy.train_logits(forward, x) if train else spec.policy.predict(forward, x)


def _backward(
    model: nn.Module,
    spec: ModelSpec,
    optimizer: torch.optim.Optimizer,
    x: Inputs,
    days: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    amp: torch.dtype | None,
) -> torch.Tensor:
    """Forward and backward of one batch; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(device, amp):
        logits = _logits(model, spec, x, days, tuple(y.shape[-2:]), train=True)
    loss = labelled_loss(logits.float(), y)
    loss.backward()
    return loss


def labelled_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy's mean over the labelled (non-void) pixels, 0 with a zero gradient when
    there is none (the mean's NaN, else); the same bits as its ``mean`` reduction otherwise."""
    labelled = (y != VOID_CLASS).sum().clamp(min=1)
    return F.cross_entropy(logits, y, ignore_index=VOID_CLASS, reduction="sum") / labelled


@dataclass
class Progress:
    """A training pass so far: its steps, those of batches with a labelled pixel (``scored``)
    and their loss sum (float64, kept on the device)."""

    loss_sum: torch.Tensor
    steps: int = 0
    scored: int = 0


def train_epoch(
    model: nn.Module,
    spec: ModelSpec,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    amp: torch.dtype | None,
    crops: torch.Generator,
    on_step: Callable[[], None] = lambda: None,
    auto_memory: bool = True,
    progress: Progress | None = None,
    stop: Callable[[], bool] = lambda: False,
    watch: LossWatch | None = None,
) -> float:
    """One pass over the training loader; returns the mean loss of its batches with a labelled
    pixel (a batch without one is skipped: no loss, no update; the scheduler still steps). The
    running loss stays on the device (one host sync per epoch, not per step); ``on_step`` is
    called after every step. ``progress`` (updated in place) continues a pass resumed
    mid-epoch; the pass ends early when ``stop()`` is true after a step. ``watch`` records each
    loss's finiteness on the device and is read with the loss sum at the end (the caller
    checks it: :func:`~gfmtune.train.divergence.check_loss`).

    On a GPU out-of-memory error, a model with an encoder switches once to chunked encoder
    calls with activation checkpointing and redoes the step (``auto_memory``); a second one
    stops with the settings to change.
    """
    model.train()
    done = progress or Progress(torch.zeros((), dtype=torch.float64, device=device))
    watch = watch or LossWatch(device)
    watch.start_pass()
    for x, days, y, labelled in _labelled_batches(loader, device):
        if labelled:
            loss = _step(model, spec, optimizer, x, days, y, device, amp, crops, auto_memory)
            lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
            watch.update(done.steps + 1, loss, lrs)
            done.loss_sum, done.scored = done.loss_sum + loss, done.scored + 1
        scheduler.step()
        done.steps += 1
        on_step()
        if stop():
            break
    return watch.read(done.loss_sum) / max(done.scored, 1)


def _step(
    model: nn.Module,
    spec: ModelSpec,
    optimizer: torch.optim.Optimizer,
    x: Inputs,
    days: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    amp: torch.dtype | None,
    crops: torch.Generator,
    auto_memory: bool,
) -> torch.Tensor:
    """One optimiser step on a batch (out-of-memory handling: :func:`train_epoch`); its loss,
    detached."""
    if not isinstance(x, list):
        x, y = spec.policy.train_view(x, y, crops)
    batch = (model, spec, optimizer, x, days, y, device, amp)
    frames = y.shape[0] * days.shape[1]
    try:
        loss = _backward(*batch)
    except torch.OutOfMemoryError as err:
        if not (auto_memory and spec.has_encoder and not model.checkpointing):
            raise out_of_memory(frames) from err
        loss = None
    if loss is None:
        # retried outside the except block: there, the traceback still holds the failed
        # step's activations, which empty_cache() then cannot free
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        model.set_memory_plan(max(1, frames // 4), True)
        log.warning(
            "out of memory at %d frames: chunked encoder calls with activation "
            "checkpointing from now on",
            frames,
        )
        try:
            loss = _backward(*batch)
        except torch.OutOfMemoryError as again:
            raise out_of_memory(frames) from again
    optimizer.step()
    return loss.detach()


def out_of_memory(frames: int) -> RuntimeError:
    return RuntimeError(
        f"out of GPU memory with {frames} encoder frames per step: set train.settings "
        "activation_checkpointing: true and encoder_frames_per_call (e.g. 70), or lower "
        "batch_size; precision bf16 also halves activation memory"
    )


class HalvingParts:
    """Runs a computation on a batch in parts of consecutive samples: the whole batch until a
    CUDA out-of-memory error, then parts of half the size that failed, this and every later
    batch (with a warning), down to one sample, whose error is raised. For computations whose
    samples do not depend on each other (no autograd, the model in eval mode): the results
    equal the whole batch's."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.size: int | None = None  # samples per call; None: the whole batch

    def parts(self, n: int, run: Callable[[slice], R]) -> Iterator[tuple[slice, R]]:
        """``(part, run(part))`` for consecutive parts covering samples ``0..n-1``."""
        start = 0
        while start < n:
            part = slice(start, min(n, start + (self.size or n)))
            size = part.stop - start
            result = run(part) if size == 1 else _unless_out_of_memory(run, part)
            if result is None:
                self._halve(size)
                continue
            yield part, result
            start = part.stop

    def _halve(self, size: int) -> None:
        self.size = size // 2
        torch.cuda.empty_cache()
        log.warning(
            "out of GPU memory %s %d samples at a time: %d at a time from now on",
            self.what,
            size,
            self.size,
        )


def _unless_out_of_memory(run: Callable[[slice], R], part: slice) -> R | None:
    """``run(part)``, or None after a CUDA out-of-memory error (returned outside the except
    block, so that the traceback, which holds the failed call's tensors, is freed)."""
    try:
        return run(part)
    except torch.OutOfMemoryError:
        return None


def _samples(x: Inputs, part: slice) -> Inputs:
    """The samples ``part`` of frames or of cached encoder levels."""
    return [level[part] for level in x] if isinstance(x, list) else x[part]


def _eval_logits(
    model: nn.Module,
    spec: ModelSpec,
    device: torch.device,
    amp: torch.dtype | None,
    batch: tuple[Inputs, torch.Tensor, torch.Tensor],
    part: slice,
) -> torch.Tensor:
    """Evaluation logits of the samples ``part`` of ``batch`` (inputs, days, labels)."""
    x, days, y = batch
    with autocast(device, amp):
        return _logits(model, spec, _samples(x, part), days[part], tuple(y.shape[-2:]), False)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    spec: ModelSpec,
    loader: DataLoader,
    device: torch.device,
    amp: torch.dtype | None,
    per_sample: bool = False,
) -> ConfusionMatrix:
    """Confusion matrix of the model on a loader (full-resolution predictions); with
    ``per_sample`` also each sample's, in the loader's order. After a CUDA out-of-memory error
    the batches are evaluated in smaller parts (:class:`HalvingParts`), to the same result."""
    model.eval()
    matrix = ConfusionMatrix(device=device, per_sample=per_sample)
    halving = HalvingParts("evaluating")
    for batch in _batches(loader, device):
        run = functools.partial(_eval_logits, model, spec, device, amp, batch)
        for part, logits in halving.parts(len(batch[2]), run):
            matrix.update(logits.float(), batch[2][part])
    return matrix


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
