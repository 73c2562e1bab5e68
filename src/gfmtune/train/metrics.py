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
        sample = torch.arange(len(target), device=target.device).view(-1, *[1] * (target.dim() - 1))
        index = (sample.expand_as(target)[keep] * self.n + target[keep].long()) * self.n
        index += pred[keep].long()
        counts = torch.bincount(index, minlength=len(target) * self.n * self.n)
        per_sample = counts.view(len(target), self.n, self.n)
        self.matrix += per_sample.sum(0)
        if self.samples is not None:
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


def metrics_from_confusion(matrix: np.ndarray, void_class: int = VOID_CLASS) -> dict:
    """Per-class IoU, precision, recall; ``miou``, ``miou_paper`` and overall accuracy."""
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    fp, fn = m.sum(0) - tp, m.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = tp / (tp + fp + fn)
        precision = tp / (tp + fp)
        recall = tp / (tp + fn)
    real = [c for c in range(len(m)) if c != void_class]
    iou_paper = np.where(np.isnan(iou), 0.0, iou)  # the paper's mean counts every class
    total = m.sum()
    return {
        "miou": float(np.nanmean(iou[real])) if np.isfinite(iou[real]).any() else float("nan"),
        "miou_paper": float(iou_paper.mean()),
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
