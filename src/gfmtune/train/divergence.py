"""Divergence: a training loss or trained weights no longer finite stop the cell.

Cost: a GPU runs ahead of the host until something reads a device value back, so nothing here
reads one per step. :class:`LossWatch` keeps the first non-finite step and the last finite loss
on the device (two element-wise kernels a step) and is read once per pass, in the transfer that
already brings the pass's loss sum back (:func:`~gfmtune.train.loop.train_epoch`);
:func:`check_weights` reads one flag per epoch end, where the loop already waits for the device
(that read, validation, saving). Every save of ``state.pt`` or ``best.pt`` follows these checks,
so no diverged weights are ever saved.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

#: Trained tensors named in a divergence error, at most.
NAMED = 3


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or weights: a retry with the same settings repeats it."""


class LossWatch:
    """The first non-finite loss of a training attempt and the last finite loss before it, kept
    on the device: :meth:`update` at every step, :meth:`read` once at a pass's end."""

    def __init__(self, device: torch.device) -> None:
        self.first_bad = torch.zeros((), dtype=torch.int64, device=device)  # 0: none yet
        self.last_finite = torch.full((), math.nan, dtype=torch.float64, device=device)
        self.lrs: list[tuple[int, dict[str, float]]] = []  # (from step, learning rates), host
        self.bad_step: int | None = None  # after read(): the pass's first non-finite step
        self.last_loss: float | None = None  # after read(): the last finite loss, if any

    def start_pass(self) -> None:
        """Forget the learning rates of the pass before (steps count from 1 in each pass)."""
        self.lrs = []

    def update(self, step: int, loss: torch.Tensor, lrs: dict[str, float]) -> None:
        """Record ``loss`` of ``step`` (1-based in the pass) and the learning rates it used."""
        if not self.lrs or self.lrs[-1][1] != lrs:
            self.lrs.append((step, dict(lrs)))
        finite, healthy = torch.isfinite(loss), self.first_bad == 0
        self.last_finite = torch.where(finite & healthy, loss.double(), self.last_finite)
        self.first_bad = torch.where(healthy & ~finite, step, self.first_bad)

    def read(self, loss_sum: torch.Tensor) -> float:
        """The pass's loss sum on the host, read in one transfer with the watch's state."""
        total, bad, last = torch.stack(
            [loss_sum.double(), self.first_bad.double(), self.last_finite]
        ).tolist()
        self.bad_step = int(bad) or None
        self.last_loss = None if math.isnan(last) else last
        return total

    def lrs_at(self, step: int) -> dict[str, float]:
        """The learning rates of ``step`` of the pass."""
        return next(lrs for first, lrs in reversed(self.lrs) if first <= step)


def lr_text(lrs: dict[str, float]) -> str:
    return ", ".join(f"lr_{name} {lr:.3g}" for name, lr in lrs.items())


def lower_lr(lrs: dict[str, float]) -> str:
    """The remedy: the settings that set these learning rates."""
    return "lower train.settings lr" + (" (or the FT-Rate)" if "encoder" in lrs else "")


def check_loss(watch: LossWatch, where: str, epoch: int) -> None:
    """Raise :class:`DivergenceError` if the pass just read (of ``epoch``, 1-based) had a
    non-finite loss; ``where``: the cell folder and cell."""
    step = watch.bad_step
    if step is None:
        return
    if watch.last_loss is None:
        last = "no finite loss before it in this attempt"
    else:
        last = f"last finite loss {watch.last_loss:.6g}"
    lrs = watch.lrs_at(step)
    if epoch == 1 and step == 1:
        cause = (
            "the very first step, before any update, so not the learning rate: the model's "
            "output on this data is not finite (check the encoder's output and the store's "
            "values)"
        )
    else:
        cause = f"{lower_lr(lrs)}, or check the encoder's output"
    raise DivergenceError(
        f"{where}: diverged: non-finite training loss at epoch {epoch} step {step} "
        f"({lr_text(lrs)}); {last}; nothing of it was saved: {cause}"
    )


def non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors holding a NaN or an infinity (one host read for all)."""
    names, flags = [], []
    for name, tensor in named:
        names.append(name)
        flags.append(torch.isfinite(tensor.detach()).all())
    if not flags:
        return []
    finite = torch.stack(flags).cpu().tolist()
    return [name for name, ok in zip(names, finite, strict=True) if not ok]


def check_weights(
    model: nn.Module, optimizer: torch.optim.Optimizer, where: str, epoch: int, steps: int
) -> None:
    """Raise :class:`DivergenceError` if a trained parameter is no longer finite after ``steps``
    steps of ``epoch`` (1-based); ``where``: the cell folder and cell."""
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    bad = non_finite((n, p) for n, p in model.named_parameters() if id(p) in trained)
    if not bad:
        return
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    shown = ", ".join(bad[:NAMED]) + (f" and {len(bad) - NAMED} more" if len(bad) > NAMED else "")
    raise DivergenceError(
        f"{where}: diverged: non-finite weights ({shown}) after epoch {epoch} step {steps} "
        f"({lr_text(lrs)}), though every training loss was finite; nothing of it was saved: "
        f"{lower_lr(lrs)}"
    )
