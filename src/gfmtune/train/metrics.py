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
    """Accumulates (target, prediction) counts on the tensors' device."""

    def __init__(
        self,
        n_classes: int = N_CLASSES,
        ignore_index: int = VOID_CLASS,
        device: torch.device | str = "cpu",
    ) -> None:
        self.n, self.ignore = n_classes, ignore_index
        self.matrix = torch.zeros(n_classes, n_classes, dtype=torch.int64, device=device)

    def update(self, logits_or_pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = (
            logits_or_pred.argmax(1) if logits_or_pred.dim() == target.dim() + 1 else logits_or_pred
        )
        keep = target != self.ignore
        index = target[keep].long() * self.n + pred[keep].long()
        self.matrix += torch.bincount(index, minlength=self.n * self.n).view(self.n, self.n)

    def numpy(self) -> np.ndarray:
        return self.matrix.cpu().numpy()


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
