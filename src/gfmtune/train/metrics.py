"""Segmentation metrics from a 20 x 20 confusion matrix accumulated on the device.

Pixels whose target is the void class (19) are dropped. IoU_c = TP / (TP + FP + FN); a class
with no pixel in target nor prediction has no IoU (NaN) and is left out of means.

- ``miou``: mean IoU over classes 0..18, background included (U-TAE / PANGAEA convention);
- ``miou_paper``: the paper's mean over all 20 classes with void (IoU 0), which equals
  19/20 x (mean over 0..18) when every class 0..18 is defined.
"""

from __future__ import annotations

import numpy as np
import torch

from gfmtune.pastis import CLASS_NAMES, N_CLASSES, VOID_CLASS


class ConfusionMatrix:
    """Accumulates (target, prediction) counts on the tensors' device; with ``per_sample`` also
    each sample's own matrix, in the order of the updates (:meth:`per_sample_numpy`)."""

    def __init__(
        self,
        n_classes: int = N_CLASSES,
        ignore_index: int = VOID_CLASS,
        device: torch.device | str = "cpu",
        per_sample: bool = False,
    ) -> None:
        self.n, self.ignore = n_classes, ignore_index
        self.matrix = torch.zeros(n_classes, n_classes, dtype=torch.int64, device=device)
        self.samples: list[torch.Tensor] | None = [] if per_sample else None

    def update(self, logits_or_pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = (
            logits_or_pred.argmax(1) if logits_or_pred.dim() == target.dim() + 1 else logits_or_pred
        )
        keep = target != self.ignore
        index = target[keep].long() * self.n + pred[keep].long()
        cells = self.n * self.n
        if self.samples is None:
            self.matrix += torch.bincount(index, minlength=cells).view(self.n, self.n)
            return
        sample = torch.arange(len(target), device=target.device).view(-1, *[1] * (target.dim() - 1))
        index += sample.expand_as(target)[keep] * cells
        per_sample = torch.bincount(index, minlength=len(target) * cells).view(-1, self.n, self.n)
        self.matrix += per_sample.sum(0)
        self.samples.append(per_sample)

    def numpy(self) -> np.ndarray:
        return self.matrix.cpu().numpy()

    def per_sample_numpy(self) -> np.ndarray:
        """(samples, n, n): each sample's confusion (``per_sample`` only)."""
        if self.samples is None:
            raise ValueError("this ConfusionMatrix keeps no per-sample counts (per_sample=False)")
        if not self.samples:
            return np.zeros((0, self.n, self.n), dtype=np.int64)
        return torch.cat(self.samples).cpu().numpy()


def miou_from_counts(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, void_class: int = VOID_CLASS
) -> tuple[np.ndarray, np.ndarray]:
    """``miou`` (nan-mean IoU over the classes but void) and ``miou_paper`` (mean over every
    class, an undefined IoU counting 0) of summed counts (..., C), over any leading axes."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    union = tp + fp + fn
    defined = union > 0
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=defined)
    real = np.arange(tp.shape[-1]) != void_class
    n_defined = defined[..., real].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        miou = np.where(n_defined > 0, iou[..., real].sum(-1) / n_defined, np.nan)
    return miou, iou.mean(-1)


def metrics_from_confusion(matrix: np.ndarray, void_class: int = VOID_CLASS) -> dict:
    """Per-class IoU, precision, recall; ``miou``, ``miou_paper`` and overall accuracy."""
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    fp, fn = m.sum(0) - tp, m.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (tp + fp + fn)
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    miou, miou_paper = miou_from_counts(tp, fp, fn, void_class)
    total = m.sum()
    return {
        "miou": float(miou),
        "miou_paper": float(miou_paper),
        "oa": float(tp.sum() / total) if total else float("nan"),
        "per_class": {
            CLASS_NAMES[c]: {
                "iou": _num(iou[c]),
                "precision": _num(precision[c]),
                "recall": _num(recall[c]),
                "support": int(m[c].sum()),
            }
            for c in range(len(m))
        },
    }


def _num(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 6)
