"""``gfmtune bench-validation``: what the validation switches (``val_every``, ``val_patches``)
move, counted from its rows (the switches: ``tests/train/test_validation_switches.py``)."""

from __future__ import annotations

from gfmtune.bench import validation


def test_bench_validation_counts_moved_epochs_and_scores() -> None:
    def row(variant: str, t: int, epoch: int, score: float, seconds: float) -> dict:
        return {"model": "utae_tiny", "label_percent": "10", "t": t, "variant": variant,
                "best_epoch": epoch, "test_miou_paper": score, "seconds": seconds}  # fmt: skip

    rows = [
        row("paper", 1, 20, 30.0, 10.0), row("paper", 6, 18, 40.0, 10.0),
        row("val_every 4", 1, 20, 30.0, 8.0), row("val_every 4", 6, 16, 38.5, 8.0),
        row("val_patches 10", 1, 19, 31.0, 9.0), row("val_patches 10", 6, 18, 40.0, 9.0),
    ]  # fmt: skip
    every, patches = validation.summary(rows)
    assert every == {
        "variant": "val_every 4", "cells": 2, "other_epoch": 1, "other_test": 1,
        "max_test_change": 1.5, "mean_test_change": 0.75, "time_ratio": 0.8,
    }  # fmt: skip
    assert (patches["other_epoch"], patches["other_test"], patches["time_ratio"]) == (1, 1, 0.9)
