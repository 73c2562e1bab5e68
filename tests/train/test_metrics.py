"""Metrics equal hand-computed values, including classes absent from the test set."""

from __future__ import annotations

import math

import numpy as np
import torch

from gfmtune.train.metrics import ConfusionMatrix, metrics_from_confusion


def test_confusion_drops_void_targets() -> None:
    target = torch.tensor([[0, 1, 1, 19], [2, 2, 19, 3]])
    pred = torch.tensor([[0, 1, 2, 5], [2, 2, 4, 19]])
    cm = ConfusionMatrix()
    cm.update(pred, target)
    m = cm.numpy()
    assert m.sum() == 6  # two void targets dropped
    assert m[1, 1] == 1 and m[1, 2] == 1 and m[2, 2] == 2 and m[3, 19] == 1 and m[0, 0] == 1
    logits = torch.nn.functional.one_hot(pred, 20).permute(2, 0, 1)[None].float()
    again = ConfusionMatrix()
    again.update(logits, target[None])
    assert np.array_equal(again.numpy(), m)


def test_metrics_hand_computed() -> None:
    m = np.zeros((20, 20), dtype=np.int64)
    m[0, 0], m[0, 1] = 8, 2  # class 0: TP 8, FN 2
    m[1, 1], m[1, 0] = 3, 1  # class 1: TP 3, FN 1, FP 2 (from class 0)
    m[2, 4] = 5  # class 2: never right; class 4 absent from targets but predicted
    # FP of class 0 = 1 -> IoU0 = 8 / (8 + 1 + 2) ; IoU1 = 3 / (3 + 2 + 1); IoU2 = 0; IoU4 = 0
    out = metrics_from_confusion(m)
    iou0, iou1 = 8 / 11, 3 / 6
    # classes 3, 5..18 have no pixel anywhere: undefined, left out of miou
    assert math.isclose(out["miou"], (iou0 + iou1 + 0 + 0) / 4)
    assert math.isclose(out["miou_paper"], (iou0 + iou1) / 20)
    assert math.isclose(out["oa"], 11 / 19)
    per = out["per_class"]
    assert per["Background"]["precision"] == round(8 / 9, 6) and per["Meadow"]["recall"] == 0.75
    assert per["Corn"]["iou"] is None and per["Winter barley"]["iou"] == 0.0
    assert per["Soft winter wheat"]["support"] == 5


def test_paper_mean_is_19_20ths_when_all_classes_defined() -> None:
    m = np.eye(20, dtype=np.int64) * 10
    m[:19, 19] = 0
    m[19, 19] = 0
    m[3, 4] = 5
    out = metrics_from_confusion(m)
    assert math.isclose(out["miou_paper"], 19 / 20 * out["miou"])
