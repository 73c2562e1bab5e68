"""The training and evaluation loops of one cell (paper protocol, REFERENCE §2).

AdamW with two parameter groups (decoder at ``lr``, encoder at FT-Rate x ``lr``; a frozen
encoder is in no group and runs without autograd), MultiStepLR stepped per iteration at
fractions of all iterations, cross-entropy ignoring the void class.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from gfmtune.data.dataset import model_frames
from gfmtune.models.policies import Forward
from gfmtune.models.registry import ModelSpec
from gfmtune.pastis import VOID_CLASS
from gfmtune.train.metrics import ConfusionMatrix
from gfmtune.train.settings import TrainSettings

log = logging.getLogger(__name__)


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
    normalise = getattr(getattr(loader, "dataset", None), "normalise", None)
    for batch in loader:
        if "features" in batch:
            x = [level.to(device, non_blocking=True) for level in batch["features"]]
        else:
            x = model_frames(batch["image"], normalise, device)
        yield (
            x,
            batch["days"].to(device, non_blocking=True),
            batch["label"].to(device, non_blocking=True),
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
    loss = F.cross_entropy(logits.float(), y, ignore_index=VOID_CLASS)
    loss.backward()
    return loss


@dataclass
class Progress:
    """A training pass so far: its steps and their loss sum (float64, kept on the device)."""

    loss_sum: torch.Tensor
    steps: int = 0


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
) -> float:
    """One pass over the training loader; returns the mean loss. The running loss stays on the
    device (one host sync per epoch, not per step); ``on_step`` is called after every step.
    ``progress`` (updated in place) continues a pass resumed mid-epoch; the pass ends early
    when ``stop()`` is true after a step.

    On a GPU out-of-memory error, a model with an encoder switches once to chunked encoder
    calls with activation checkpointing and redoes the step (``auto_memory``); a second one
    stops with the settings to change.
    """
    model.train()
    done = progress or Progress(torch.zeros((), dtype=torch.float64, device=device))
    for x, days, y in _batches(loader, device):
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
        scheduler.step()
        done.loss_sum, done.steps = done.loss_sum + loss.detach(), done.steps + 1
        on_step()
        if stop():
            break
    return float(done.loss_sum) / max(done.steps, 1)


def out_of_memory(frames: int) -> RuntimeError:
    return RuntimeError(
        f"out of GPU memory with {frames} encoder frames per step: set train.settings "
        "activation_checkpointing: true and encoder_frames_per_call (e.g. 70), or lower "
        "batch_size; precision bf16 also halves activation memory"
    )


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
    ``per_sample`` also each sample's, in the loader's order."""
    model.eval()
    matrix = ConfusionMatrix(device=device, per_sample=per_sample)
    for x, days, y in _batches(loader, device):
        with autocast(device, amp):
            logits = _logits(model, spec, x, days, tuple(y.shape[-2:]), train=False)
        matrix.update(logits.float(), y)
    return matrix
