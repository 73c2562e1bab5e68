"""One measurement of ``gfmtune bench-train``: a model, a regime, a series length and a path,
timed on synthetic tensors of PASTIS's shapes already on the device.

Both paths run the training code itself (:func:`~gfmtune.train.loop.train_epoch`,
:func:`~gfmtune.train.loop.evaluate`, :func:`~gfmtune.train.loop.build_optimizer`) and differ
only in what a :class:`BenchPath` sets:

- ``default``: what ``gfmtune train`` does with the default settings (its precision
  policy, CROMA stopped after its last used block, the feature cache for a frozen encoder with a
  fixed input, the evaluation cache of a frozen CROMA's windows, its evaluation batch size and
  DataLoader workers);
- ``reference``: what the authors' code does (fp32, every CROMA block computed and the unused
  ones discarded, a frozen encoder recomputed at every step and every validation, validation at
  batch 1, workers started for every epoch, no out-of-memory fallback).

FLOPs are counted, not derived: :class:`torch.utils.flop_counter.FlopCounterMode` over the first
warm-up call (matrix products, convolutions and attention, forward and backward as they ran,
2 FLOPs per multiply-add; CPU attention is counted with torch's own attention formula).
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter

from gfmtune.models.croma import SIZES, CromaOpticalEncoder, Transformer
from gfmtune.models.registry import ModelSpec, build_model
from gfmtune.pastis import BANDS, N_CLASSES
from gfmtune.train.devices import amp_dtype, compile_model, configure_backends
from gfmtune.train.feature_cache import cached_levels
from gfmtune.train.loop import build_optimizer, build_scheduler, evaluate, train_epoch
from gfmtune.train.settings import TrainSettings

#: Regime -> the FT-Rate measured (0.1 and 1.0 cost the same; U-TAE has none).
REGIMES: dict[str, float | None] = {"frozen": 0.0, "finetune": 0.1, "scratch": None}

#: FLOP formulas of CPU attention, which FlopCounterMode does not know (it counts CUDA's).
CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: (
        lambda q, k, v, *_, out_shape=None, **__: flop_counter.sdpa_flop_count(q, k, v)
    ),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        lambda g, q, k, v, *_, out_shape=None, **__: flop_counter.sdpa_backward_flop_count(
            g, q, k, v
        )
    ),
}


@dataclass(frozen=True)
class BenchPath:
    """A way of training a cell: its training settings and whether CROMA computes every block."""

    name: str
    settings: TrainSettings
    all_blocks: bool
    persistent_workers: bool = True  # DataLoader workers kept alive across epochs
    tf32: bool = False  # TF32 allowed in matrix products and convolutions, whatever precision
    compile_backend: str | None = None  # torch.compile's backend with settings.compile


DEFAULT = BenchPath("default", TrainSettings(), all_blocks=False)
REFERENCE = BenchPath(
    "reference",
    replace(
        TrainSettings(),
        precision="fp32",
        eval_batch_size=1,
        eval_cache=False,
        feature_cache=False,
        auto_memory=False,
    ),
    all_blocks=True,
    persistent_workers=False,
)
PATHS = (DEFAULT, REFERENCE)
#: ``--components``: the reference with one of its choices switched to the default's.
COMPONENTS = (
    BenchPath(
        "reference+precision",
        replace(REFERENCE.settings, precision=DEFAULT.settings.precision),
        all_blocks=True,
    ),
    BenchPath("reference+stop_early", REFERENCE.settings, all_blocks=False),
    BenchPath(
        "reference+feature_cache",
        replace(REFERENCE.settings, feature_cache=DEFAULT.settings.feature_cache),
        all_blocks=True,
    ),
    BenchPath(
        "reference+eval_batch",
        replace(REFERENCE.settings, eval_batch_size=DEFAULT.settings.eval_batch_size),
        all_blocks=True,
    ),
    BenchPath(
        "reference+eval_cache",
        replace(REFERENCE.settings, eval_cache=True),  # off by default (see the schema)
        all_blocks=True,
    ),
    # not a default (unmeasured on a GPU): whether it pays after first_step_s and first_val_s
    BenchPath("reference+compile", replace(REFERENCE.settings, compile=True), all_blocks=True),
)


@dataclass(frozen=True)
class Shape:
    """Synthetic input: ``batch`` series of ``t`` frames of 10 bands, ``size`` px square."""

    batch: int
    t: int
    size: int


def regimes(spec: ModelSpec) -> list[str]:
    return ["frozen", "finetune"] if spec.has_encoder else ["scratch"]


def synthetic_batch(n: int, shape: Shape, device: torch.device) -> dict[str, torch.Tensor]:
    """A loader batch of ``n`` random series (normalised frames, day offsets, labels)."""
    g = torch.Generator().manual_seed(shape.t)
    batch = {
        "image": torch.randn(n, shape.t, len(BANDS), shape.size, shape.size, generator=g),
        "days": torch.arange(shape.t).mul(10).expand(n, shape.t).contiguous(),
        "label": torch.randint(0, N_CLASSES, (n, shape.size, shape.size), generator=g),
    }
    return {k: v.to(device) for k, v in batch.items()}


class AllBlocks(nn.Module):
    """CROMA as the authors ran it: every block computed, the unused ones' output discarded.

    The wrapped encoder returns its features as usual; then the blocks after its last used one
    run on the last level's tokens and their result is dropped (same cost, same features). A
    CROMA whose every block is used (the tiny one) gets as many extra blocks as it uses, which
    emulates CROMA-large's 12 discarded blocks of 24.
    """

    def __init__(self, encoder: CromaOpticalEncoder) -> None:
        super().__init__()
        size = SIZES[encoder.size]
        used = len(encoder.transformer.layers)
        self.encoder, self.out_dims = encoder, encoder.out_dims
        self.emulated = size.depth == used
        extra = used if self.emulated else size.depth - used
        self.extra = Transformer(size.dim, extra, size.heads).layers
        self.blocks = (used, used + extra)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.encoder(x)
        _, _, gh, gw = features[-1].shape
        tokens = features[-1].flatten(2).transpose(1, 2)
        bias = self.encoder.attention_bias(gh, gw, x.device)
        for attn, ffn in self.extra:
            tokens = tokens + attn(tokens, bias)
            tokens = tokens + ffn(tokens)
        return features


def bench_model(spec: ModelSpec, regime: str, path: BenchPath, t: int) -> tuple[nn.Module, str]:
    """The model as ``path`` trains it, and a note on the CROMA blocks it computes."""
    s = path.settings
    model = build_model(
        spec.name, encoder_trainable=regime != "frozen", temporal=s.temporal, n_frames=t
    )
    if not spec.has_encoder:
        return model, ""
    model.set_memory_plan(s.encoder_frames_per_call, s.activation_checkpointing)
    if not (path.all_blocks and isinstance(model.encoder, CromaOpticalEncoder)):
        return model, ""
    model.encoder = AllBlocks(model.encoder)
    model.set_encoder_trainable(regime != "frozen")
    used, computed = model.encoder.blocks
    note = f"{computed} CROMA blocks computed, {used} used"
    return model, note + (" (extra blocks emulate CROMA-large's)" if model.encoder.emulated else "")


def uses_cache(spec: ModelSpec, regime: str, settings: TrainSettings) -> bool:
    """Whether ``gfmtune train`` trains this regime from cached encoder features."""
    return regime == "frozen" and settings.feature_cache and spec.policy.deterministic_train_input


def uses_eval_cache(spec: ModelSpec, regime: str, settings: TrainSettings) -> bool:
    """Whether ``gfmtune train`` evaluates this regime from cached window features (CROMA)."""
    return regime == "frozen" and settings.eval_cache and spec.policy.windowed


def changes(path: BenchPath, spec: ModelSpec, regime: str, device: torch.device) -> bool:
    """Whether ``path`` runs this model and regime otherwise than the reference path."""
    a, b = path.settings, REFERENCE.settings
    return (
        (path.all_blocks != REFERENCE.all_blocks and spec.family.startswith("CROMA"))
        or amp_dtype(device, a.precision) != amp_dtype(device, b.precision)
        or uses_cache(spec, regime, a) != uses_cache(spec, regime, b)
        or uses_eval_cache(spec, regime, a) != uses_eval_cache(spec, regime, b)
        or a.eval_batch_size != b.eval_batch_size
        # on CPU inductor's C++ builds take minutes per tiny model: compile is a GPU question
        or (a.compile != b.compile and device.type == "cuda")
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], n: int, device: torch.device) -> list[float]:
    """Seconds of ``n`` calls of ``fn``, each ended by a device synchronisation."""
    seconds = []
    for _ in range(n):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def counted(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (measured counting, see the module doc)."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        fn()
    return counter.get_total_flops()


def _cached_batch(
    model: nn.Module, spec: ModelSpec, batch: dict[str, torch.Tensor], device: torch.device,
    amp: torch.dtype | None,
) -> dict[str, Any]:  # fmt: skip
    """The batch as a cached-feature loader yields it."""
    levels = cached_levels(model, spec, batch["image"], device, amp)
    return {"features": levels, "days": batch["days"], "label": batch["label"]}


def measure(
    spec: ModelSpec, regime: str, shape: Shape, path: BenchPath, device: torch.device,
    steps: int, warmup: int,
) -> dict[str, Any]:  # fmt: skip
    """Training step, validation per patch, memory and FLOPs of one (model, regime, t, path)."""
    s = path.settings
    amp = amp_dtype(device, s.precision)
    configure_backends(device, s.precision, s.deterministic)  # as gfmtune train does
    if path.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model, note = bench_model(spec, regime, path, shape.t)
    model.to(device)
    if s.compile:
        compile_model(model, spec.has_encoder, path.compile_backend)
    train_batch = synthetic_batch(shape.batch, shape, device)
    eval_batch = synthetic_batch(s.eval_batch_size, shape, device)
    cached, eval_cached = uses_cache(spec, regime, s), uses_eval_cache(spec, regime, s)
    row: dict[str, Any] = {
        "model": spec.name, "regime": regime, "ft_rate": REGIMES[regime], "t": shape.t,
        "path": path.name, "status": "measured", "eval_batch": s.eval_batch_size,
        "precision": str(amp or torch.float32).removeprefix("torch."),
        "feature_cache": cached, "eval_cache": eval_cached, "note": note,
    }  # fmt: skip
    if cached or eval_cached:  # the cache build: the encoder on a training batch's inputs
        model.eval()
        encode = functools.partial(cached_levels, model, spec, train_batch["image"], device, amp)
        row["cache_flops_per_patch"] = counted(encode) / shape.batch
        row["cache_patch_s"] = statistics.median(timed(encode, steps, device)) / shape.batch
        eval_batch = _cached_batch(model, spec, eval_batch, device, amp)
    if cached:
        train_batch = _cached_batch(model, spec, train_batch, device, amp)
    optimizer = build_optimizer(model, spec, REGIMES[regime], s)
    scheduler = build_scheduler(optimizer, warmup + steps, s)
    crops = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> float:
        return train_epoch(
            model, spec, [train_batch], optimizer, scheduler, device, amp, crops,
            auto_memory=s.auto_memory,
        )  # fmt: skip

    def validate() -> object:
        return evaluate(model, spec, [eval_batch], device, amp)

    first_s = timed(step, 1, device)[0]  # first calls: torch.compile's compile time included
    flops = counted(step)
    timed(step, warmup - 1, device)
    step_all = timed(step, steps, device)
    step_s = statistics.median(step_all)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    first_val_s = timed(validate, 1, device)[0]
    val_flops = counted(validate)
    timed(validate, warmup - 1, device)
    val_all = timed(validate, steps, device)
    val_s = statistics.median(val_all)
    row |= {
        "step_s": step_s,
        "first_step_s": first_s,
        "first_val_s": first_val_s,
        "step_spread": (max(step_all) - min(step_all)) / step_s,
        "step_all": step_all,
        "val_all": val_all,
        "frames_per_s": shape.batch * shape.t / step_s,
        "train_flops": flops,
        "train_tflops": flops / step_s / 1e12,
        "val_patch_s": val_s / s.eval_batch_size,
        "val_flops_per_patch": val_flops / s.eval_batch_size,
        "val_tflops": val_flops / val_s / 1e12,
        "peak_memory_gib": peak,
        "memory_plan": "chunked + checkpointing" if getattr(model, "checkpointing", False) else "",
    }
    return row


def _out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or isinstance(
        err.__cause__, torch.OutOfMemoryError
    )


def measure_or_oom(
    spec: ModelSpec, regime: str, shape: Shape, path: BenchPath, device: torch.device,
    steps: int, warmup: int,
) -> dict[str, Any]:  # fmt: skip
    """:func:`measure`, or a row saying it ran out of GPU memory; either way the GPU memory is
    released afterwards (after the ``except`` block, where the failed step's tensors are no
    longer referenced), so that the next measurement starts empty."""
    row = None
    try:
        row = measure(spec, regime, shape, path, device, steps, warmup)
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not _out_of_memory(err):
            raise
    gc.collect()
    torch.cuda.empty_cache()
    return row or {
        "model": spec.name, "regime": regime, "ft_rate": REGIMES[regime], "t": shape.t,
        "path": path.name, "status": "out of memory",
    }  # fmt: skip
