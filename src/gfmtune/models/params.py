"""``gfmtune params``: the paper's parameter table, and the exact counts this project trains.

Paper convention (docs/protocol.md, "The parameter table"): "decoder only" counts the neck and the
UPerNet head (PPM, bottleneck, laterals, FPN convs, fpn_bottleneck), neither the 1 x 1 classifier
nor the L-TAE; "whole network" adds the full encoder (all 24 CROMA-large blocks). U-TAE has no
pretrained encoder: both columns give the whole model, in its official form (``utae``) and as the
paper ran it (``utae_paper``, no normalisation in the down blocks). The exact columns count the
parameters the optimiser updates: at FT-Rate 0 everything but the encoder (classifier and temporal
module included), at FT-Rate > 0 also the encoder blocks whose output is used (CROMA stops after
block 11, so blocks 12-23 are never trained). ``temporal`` names the module that reduces time
(the decoder's: ``train.settings.temporal`` unless the model fixes its own; U-TAE's own L-TAE)
and ``temporal_params`` counts its parameters, which pooling (``mean``, ``max``) saves.
``weights`` says whether the checkpoint's sha256 and size were both read from the publisher's
record (``confirmed``), or not (``unconfirmed``: ``Checkpoint.source`` says where they come
from), or whether the model loads no checkpoint (``none``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from torch import nn

from gfmtune.fileio import atomic_path
from gfmtune.models.catalog import Checkpoint
from gfmtune.models.registry import REGISTRY, build_model, get_spec, temporal_module
from gfmtune.models.upernet import TEMPORAL_MODULES

PAPER_MODELS = ("croma", "dino")
UTAE_MODELS = ("utae", "utae_paper")


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def gfm_row(name: str, temporal: str = "ltae", frames: int | None = None) -> dict:
    spec = get_spec(name)
    # encoder truncated to the blocks it uses
    model = build_model(name, temporal=temporal, n_frames=frames)
    decoder_only = count(model.neck) + count(model.head)
    full_encoder = count(spec.build_encoder())
    trained_frozen = count(model) - count(model.encoder)
    return {
        "name": name,
        "model": spec.family,
        "decoder_only_m": round(decoder_only / 1e6, 2),
        "whole_network_m": round((decoder_only + full_encoder) / 1e6, 2),
        "trainable_ft0": trained_frozen,
        "trainable_ft_pos": count(model),
        "temporal": temporal_module(spec, temporal),
        "temporal_params": count(model.temporal),
        "weights": weights_status(spec.checkpoint),
    }


def weights_status(checkpoint: Checkpoint | None) -> str:
    """``none`` (no checkpoint), ``confirmed`` or ``unconfirmed`` (``Checkpoint.confirmed``)."""
    if checkpoint is None:
        return "none"
    return "confirmed" if checkpoint.confirmed else "unconfirmed"


def utae_row(name: str) -> dict:
    spec = get_spec(name)
    model = spec.build_baseline()
    total = count(model)
    millions = round(total / 1e6, 2)
    return {
        "name": name,
        "model": spec.family,
        "decoder_only_m": millions,
        "whole_network_m": millions,
        "trainable_ft0": total,
        "trainable_ft_pos": total,
        "temporal": "ltae",  # U-TAE's own, at its lowest resolution
        "temporal_params": count(model.ltae),
        "weights": "none",
    }


def parameter_table(
    models: list[str] | None = None, temporal: str = "ltae", frames: int | None = None
) -> pd.DataFrame:
    """One row per model, ``name`` its registry name; by default the paper's (CROMA, DINO, both
    U-TAE forms). ``temporal``: the run's decoder setting (``linear`` needs ``frames``, its
    series length). Instantiates models only, on the CPU."""
    names = models or [*PAPER_MODELS, *UTAE_MODELS]
    return pd.DataFrame(
        [gfm_row(n, temporal, frames) if get_spec(n).has_encoder else utae_row(n) for n in names]
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="CSV file to write (default: stdout)")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=sorted(REGISTRY),
        help="registry names of the rows (default: the paper's models)",
    )
    parser.add_argument(
        "--temporal",
        choices=TEMPORAL_MODULES,
        default="ltae",
        help="the decoder's temporal module (train.settings.temporal; default: ltae, the paper's)",
    )
    parser.add_argument(
        "--frames", type=int, help="series length, for --temporal linear (a weight per frame)"
    )


def run(args: argparse.Namespace) -> int:
    if args.temporal == "linear" and not args.frames:
        raise SystemExit("gfmtune params: --temporal linear needs --frames (the series length)")
    table = parameter_table(args.models, args.temporal, args.frames)
    if args.out is None:
        table.to_csv(sys.stdout, index=False)
    else:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False)
    return 0
