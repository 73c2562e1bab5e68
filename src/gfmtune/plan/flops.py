"""FLOPs and tensor bytes of one model, regime and series length, counted on the meta device.

The model is built by :func:`~gfmtune.models.registry.build_model` on the meta device (shapes,
no values: a paper-size model in seconds), and ``torch.utils.flop_counter.FlopCounterMode``
counts (as :func:`gfmtune.bench.measure.counted`, 2 FLOPs per multiply-add, forward and
backward as they run):

- a training step: one :func:`~gfmtune.train.loop.train_epoch` pass over one batch, the
  optimiser step included, from frames or (frozen encoder with a fixed input) from cached
  features;
- evaluation of a patch: the policy's prediction as :func:`~gfmtune.train.loop.evaluate`
  computes it (CROMA: its 2 x 2 windows), from frames or from cached levels;
- a feature-cache build: the frozen encoder on a patch's evaluation input
  (:func:`~gfmtune.train.feature_cache.cached_levels`), and the values it stores.

Every count is over ``COUNT_BATCH`` samples and divided by it: FLOPs are linear in the batch
(checked for the paper's models: batches 2, 4 and 8 count 1 : 2 : 4).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gfmtune.bench.measure import REGIMES, Shape, counted, synthetic_batch
from gfmtune.models.registry import ModelSpec, build_model, get_spec
from gfmtune.train.divergence import LossWatch
from gfmtune.train.feature_cache import cached_levels
from gfmtune.train.loop import build_optimizer, build_scheduler, forward_fn, train_epoch
from gfmtune.train.settings import TrainSettings

META = torch.device("meta")
#: Samples per count: training needs two (BatchNorm); FLOPs are linear in the batch.
COUNT_BATCH = 2
#: AdamW's moments per optimised parameter (exp_avg, exp_avg_sq; the parameter's dtype).
MOMENTS = 2


@dataclass(frozen=True, order=True)
class FlopKey:
    """What the counts depend on: model, regime, frames, patch side, temporal reduction and
    whether the encoder recomputes its activations in the backward pass."""

    model: str
    regime: str  # frozen | finetune | scratch
    t: int
    size: int
    temporal: str = "ltae"
    checkpointing: bool = False


@dataclass(frozen=True)
class FlopRow:
    """Counts of one :class:`FlopKey` (FLOPs per sample or patch; ``None``: not applicable)."""

    key: FlopKey
    train: int  # a training step, per sample
    eval: int  # evaluation, per patch
    trained_bytes: int  # best.pt: the trained tensors (a frozen encoder's left out)
    optimizer_bytes: int  # state.pt adds AdamW's moments of the optimised parameters
    cache_kind: str | None = None  # frozen: "features" (fixed input) | "windows" (CROMA's)
    cache_build: int | None = None  # the frozen encoder on a patch's evaluation input
    cache_values: int | None = None  # values the cache stores per patch
    cached_train: int | None = None  # a training step from cached features, per sample
    cached_eval: int | None = None  # evaluation from cached levels, per patch


class _Unread(LossWatch):
    """A loss watch that never reads the loss back (meta tensors hold no values)."""

    def read(self, loss_sum: torch.Tensor) -> float:
        return 0.0


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without the optimiser's and the weights' per-build log lines."""
    loggers = [logging.getLogger(n) for n in ("gfmtune.train.loop", "gfmtune.models.registry")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def meta_model(spec: ModelSpec, key: FlopKey) -> nn.Module:
    """The model as ``gfmtune train`` builds it for ``key``, on the meta device."""
    with META:
        model = build_model(
            spec.name,
            encoder_trainable=key.regime != "frozen",
            temporal=key.temporal,
            n_frames=key.t,
        )
    if spec.has_encoder:
        model.set_memory_plan(None, key.checkpointing)
    return model


def train_flops(model: nn.Module, spec: ModelSpec, regime: str, batch: dict) -> int:
    """FLOPs of one training step (one train_epoch pass over ``batch``)."""
    settings = TrainSettings()
    optimizer = build_optimizer(model, spec, REGIMES[regime], settings)
    scheduler = build_scheduler(optimizer, 1, settings)
    crops = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    return counted(
        lambda: train_epoch(
            model, spec, [batch], optimizer, scheduler, device, None, crops, watch=_Unread(device)
        )
    )


@torch.no_grad()
def eval_flops(model: nn.Module, spec: ModelSpec, batch: dict) -> int:
    """FLOPs of evaluating ``batch``: its frames, or its cached ``features``, to logits at
    full resolution (what :func:`~gfmtune.train.loop.evaluate` computes)."""
    model.eval()
    size = tuple(batch["label"].shape[-2:])
    if "features" in batch:
        return counted(lambda: spec.policy.eval_decoded(model.decode, batch["features"], size))
    forward = forward_fn(model, spec, batch["days"])
    return counted(lambda: spec.policy.predict(forward, batch["image"]))


def _bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def count(key: FlopKey) -> FlopRow:
    """Every count of ``key`` (a few seconds for CROMA-large)."""
    spec = get_spec(key.model)
    frozen = key.regime == "frozen"
    with _quiet():
        model = meta_model(spec, key)
        batch = synthetic_batch(COUNT_BATCH, Shape(COUNT_BATCH, key.t, key.size), META)
        state = model.state_dict()
        return FlopRow(
            key,
            train=train_flops(model, spec, key.regime, batch) // COUNT_BATCH,
            eval=eval_flops(model, spec, batch) // COUNT_BATCH,
            trained_bytes=_bytes(
                v for k, v in state.items() if not (frozen and k.startswith("encoder."))
            ),
            optimizer_bytes=MOMENTS * _bytes(p for p in model.parameters() if p.requires_grad),
            **(_cache_counts(model, spec, batch) if frozen else {}),
        )


def _cache_counts(model: nn.Module, spec: ModelSpec, batch: dict) -> dict[str, Any]:
    """A frozen encoder's cache: its build, values per patch, and training (fixed input only)
    and evaluation from it, per sample."""
    images = batch["image"]
    levels = cached_levels(model, spec, images, META, None)
    cached = {"features": levels, "days": batch["days"], "label": batch["label"]}
    fixed = spec.policy.deterministic_train_input
    build = counted(lambda: cached_levels(model, spec, images, META, None))
    train = train_flops(model, spec, "frozen", cached) // COUNT_BATCH if fixed else None
    return {
        "cache_kind": "features" if fixed else "windows",
        "cache_build": build // COUNT_BATCH,
        "cache_values": sum(level[0].numel() for level in levels),
        "cached_train": train,
        "cached_eval": eval_flops(model, spec, cached) // COUNT_BATCH,
    }
