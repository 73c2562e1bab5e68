"""The encoder contract (docs/add-an-encoder.md), checked once when a model is built.

What the encoder declares (``out_dims``, its methods) is checked before weights are loaded;
after ``truncate()``, what it returns for one dummy batch: 2 frames (a batch of 1 x 2 frames, so
a merged or dropped frame axis shows) of its policy's bands at its input size, run under
``torch.no_grad`` in eval mode, with the random state and every module's training flag restored
afterwards (a joint-time encoder, ``joint_time`` True, gets them as one series (1, 2, C, H,
W) and must still return 2 frames' levels), so that building a model neither draws nor changes
anything (a declaration that breaks the contract runs it too, to report all at once). Every
violation is one line of one :class:`EncoderContractError` naming the model and the encoder's
``module:class``, before any data is read.

A plug-in's token grid on the frames it will see (:func:`warn_small_grid`, called by the training
job once the store's patch size is known) is only warned about: a grid below
:data:`SMALL_GRID` x :data:`SMALL_GRID` trains, but its decoder has next to nothing to work with.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from gfmtune.pastis import BANDS

if TYPE_CHECKING:
    from gfmtune.models.policies import InputPolicy
    from gfmtune.models.registry import ModelSpec

log = logging.getLogger(__name__)
#: output levels the neck (x4, x2, x1, x0.5) and the UPerNet head take
LEVELS = 4
#: frames of the dummy batch (N = batch 1 x 2 frames)
DUMMY_FRAMES = 2
#: what a level may hold: fp32, or fp16/bf16 under autocast (what the feature cache stores)
LEVEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: the smallest level side: the neck halves the last level (2 x 2 max pooling)
MIN_SIDE = 2
#: a plug-in whose token grid on the frames it sees is narrower gets a warning: the neck's
#: coarsest level (x0.5) is then one pixel (a stride-16 stem on the demo's 32 px patches: 2 x 2)
SMALL_GRID = 4


class EncoderContractError(ValueError):
    """An encoder breaks the contract; one line per violation, naming model and encoder."""


def check_declaration(encoder: nn.Module, spec: ModelSpec) -> None:
    """Before weights are loaded: an :class:`EncoderContractError` if what ``encoder``
    declares breaks the contract, listing its output's problems too."""
    problems = declaration_problems(encoder, spec)
    if problems:
        raise contract_error(encoder, spec, problems + output_problems(encoder, spec))


def check_output(encoder: nn.Module, spec: ModelSpec) -> None:
    """After ``truncate()``: an :class:`EncoderContractError` if the encoder's output for the
    dummy batch breaks the contract."""
    problems = output_problems(encoder, spec)
    if problems:
        raise contract_error(encoder, spec, problems)


def contract_error(
    encoder: nn.Module, spec: ModelSpec, problems: list[str]
) -> EncoderContractError:
    """The error naming the model and the encoder's ``module:class``, a line per problem."""
    kind = type(encoder)
    return EncoderContractError(
        f"model {spec.name!r}: encoder {kind.__module__}:{kind.__qualname__} breaks the "
        f"encoder contract (docs/add-an-encoder.md) in {len(problems)} way(s):\n  "
        + "\n  ".join(problems)
    )


def output_problems(encoder: nn.Module, spec: ModelSpec) -> list[str]:
    """What is wrong with the encoder's output for the dummy batch (none for a non-module)."""
    if not isinstance(encoder, nn.Module):
        return []
    frames = dummy_frames(spec.policy)
    levels, failure = _dummy_levels(encoder, frames)
    return [failure] if failure else level_problems(levels, _valid_dims(encoder), len(frames))


def _valid_dims(encoder: nn.Module) -> list[int] | None:
    """``out_dims`` when it lists :data:`LEVELS` equal positive channel counts, else None."""
    dims = getattr(encoder, "out_dims", None)
    if not isinstance(dims, list | tuple) or len(dims) != LEVELS:
        return None
    if not all(isinstance(d, int) and d > 0 for d in dims) or len(set(dims)) != 1:
        return None
    return list(dims)


def declaration_problems(encoder: nn.Module, spec: ModelSpec) -> list[str]:
    """What is wrong with what the encoder declares: its type, ``out_dims`` and methods."""
    problems = []
    if not isinstance(encoder, nn.Module):
        problems.append(f"build_encoder must return a torch.nn.Module, got {type(encoder)}")
    declared, dims = getattr(encoder, "out_dims", None), _valid_dims(encoder)
    if dims is None:
        problems.append(
            f"out_dims must list {LEVELS} equal positive channel counts (one per output level), "
            f"got {declared!r}"
        )
    elif dims[0] % spec.ltae_heads:
        problems.append(
            f"out_dims channels {dims[0]} are not divisible by the decoder's "
            f"ltae_heads {spec.ltae_heads}"
        )
    needed = ["truncate"] + (["load_encoder_state"] if spec.checkpoint else [])
    problems += [f"no method {m}()" for m in needed if not callable(getattr(encoder, m, None))]
    return problems


def dummy_frames(policy: InputPolicy) -> torch.Tensor:
    """The dummy batch: :data:`DUMMY_FRAMES` frames (N, C, size, size) of the policy's bands
    and input size, drawn from a generator of its own (the global random state is untouched)."""
    bands = len(BANDS) if policy.bands is None else len(policy.bands)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(DUMMY_FRAMES, bands, policy.size, policy.size, generator=generator)


def encoder_side(policy: InputPolicy, patch_side: int) -> int:
    """The side of the frames the encoder sees of ``patch_side`` px patches: the patch itself
    (``native``), or the policy's crop, window or resize side."""
    return patch_side if policy.kind == "native" else policy.size


def token_grid(encoder: nn.Module, policy: InputPolicy, side: int) -> tuple[int, int] | None:
    """The h x w of the encoder's first level for a dummy batch of ``side`` px frames (on the
    encoder's device; random state and training flags restored), or None when the forward pass
    fails or returns no 4-dimensional level there."""
    frames = dummy_frames(replace(policy, size=side))
    parameter = next(encoder.parameters(), None)
    if parameter is not None:
        frames = frames.to(parameter.device)
    levels, failure = _dummy_levels(encoder, frames)
    if failure or not isinstance(levels, list | tuple) or not levels:
        return None
    first = levels[0]
    if not isinstance(first, torch.Tensor) or first.ndim != 4:
        return None
    return int(first.shape[-2]), int(first.shape[-1])


def warn_small_grid(encoder: nn.Module, spec: ModelSpec, patch_side: int) -> tuple[int, int] | None:
    """Log a warning naming the model, the input size and the grid when the encoder's token grid
    on the frames it sees of ``patch_side`` px patches is below :data:`SMALL_GRID` on a side;
    return that grid (None when it cannot be measured)."""
    side = encoder_side(spec.policy, patch_side)
    grid = token_grid(encoder, spec.policy, side)
    if grid is not None and min(grid) < SMALL_GRID:
        h, w = grid
        log.warning(
            "model %r: its encoder gives a %d x %d token grid on %d x %d px input (%s policy, "
            "%d px patches); below %d x %d the neck's coarsest level is 1 pixel and the decoder "
            "sees almost no context: use a smaller stride or patch size, or a resize policy "
            "(docs/add-an-encoder.md)",
            spec.name, h, w, side, side, spec.policy.kind, patch_side, SMALL_GRID, SMALL_GRID,
        )  # fmt: skip
    return grid


def _dummy_levels(encoder: nn.Module, frames: torch.Tensor) -> tuple[object, str | None]:
    """The encoder's output for ``frames`` in eval mode without autograd, and None; or None and
    the line saying how the forward pass failed. Random state and training flags restored."""
    modes = [(module, module.training) for module in encoder.modules()]
    encoder.eval()
    # a joint-time encoder (``joint_time``, e.g. prithvi_time) takes the frames as one series
    inputs = frames.unsqueeze(0) if getattr(encoder, "joint_time", False) else frames
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            return encoder(inputs), None
    except Exception as err:  # the plug-in's own code: any failure breaks the contract
        reason = " ".join(str(err).split())  # on one line
        shape = tuple(inputs.shape)
        return None, f"forward on a dummy batch {shape} raised {type(err).__name__}: {reason}"
    finally:
        for module, training in modes:
            module.training = training


def level_problems(levels: object, dims: list[int] | None, frames: int) -> list[str]:
    """What is wrong with the output ``levels`` of a forward pass on ``frames`` frames: their
    number, and each level's shape, channels (``dims``, when valid), dtype and resolution."""
    if not isinstance(levels, list | tuple):
        return [f"forward must return a list of {LEVELS} maps, got a {type(levels).__name__}"]
    problems = []
    if len(levels) != LEVELS:
        problems.append(
            f"forward returned {len(levels)} level(s), out_dims and the decoder need {LEVELS}"
        )
    sides = {}
    for i, level in enumerate(levels):
        if not isinstance(level, torch.Tensor):
            problems.append(f"level {i} is a {type(level).__name__}, not a tensor")
            continue
        problems += _shape_problems(i, level, dims, frames)
        if level.dtype not in LEVEL_DTYPES:
            allowed = ", ".join(str(d).removeprefix("torch.") for d in LEVEL_DTYPES)
            problems.append(
                f"level {i} is {str(level.dtype).removeprefix('torch.')}, not one of {allowed}"
            )
        if level.ndim == 4:
            sides[i] = tuple(level.shape[-2:])
    return problems + _resolution_problems(sides)


def _shape_problems(i: int, level: torch.Tensor, dims: list[int] | None, frames: int) -> list[str]:
    """Level ``i`` must be (frames, out_dims[i], h, w): batch x time kept, its declared channels."""
    shape = tuple(level.shape)
    if level.ndim != 4:
        return [f"level {i} has shape {shape}, not 4 dimensions (frames, channels, h, w)"]
    problems = []
    if shape[0] != frames:
        problems.append(
            f"level {i} has {shape[0]} frame(s) for the {frames} given: batch and time "
            "dimensions must be kept (N = batch x frames in and out)"
        )
    if dims is not None and i < len(dims) and shape[1] != dims[i]:
        problems.append(f"level {i} has {shape[1]} channels, out_dims[{i}] is {dims[i]}")
    return problems


def _resolution_problems(sides: dict[int, tuple[int, int]]) -> list[str]:
    """The levels must share one h x w (the neck builds the pyramid from it), at least
    :data:`MIN_SIDE` on each side."""
    if len(set(sides.values())) > 1:
        listed = ", ".join(f"level {i} {h} x {w}" for i, (h, w) in sides.items())
        return [f"levels of mixed resolution ({listed}): all must share one h x w"]
    small = [side for side in sides.values() if min(side) < MIN_SIDE]
    if small:
        h, w = small[0]
        return [
            f"levels of {h} x {w}: at least {MIN_SIDE} x {MIN_SIDE} needed (the neck halves them)"
        ]
    return []
