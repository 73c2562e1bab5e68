"""Model registry: a name maps to its encoder, decoder, input policy and checkpoint facts.

``croma``, ``dino`` and ``utae`` are the paper's models (``utae`` in its official form,
``utae_paper`` as the paper ran it, without normalisation in the down blocks); ``*_tiny`` are the
same code with small dimensions for CPU tests and the demo (no pretrained weights). ``moco`` is
``dino``'s SSL4EO-S12 ViT-S/16 with MoCo v3 weights (same code, its qkv biases loaded), so that a
study can tell the architecture from the pretraining, and ``moco_scaled`` the same fed
reflectance / 10000 (``InputPolicy.scale``); ``dino_mean_tiny`` is ``dino_tiny`` with the mean
over time in place of the decoder's L-TAE (``ModelSpec.temporal``). ``prithvi`` runs
Prithvi-EO-2.0-300M on each frame alone at its native 128 px, ``prithvi_224`` resized to 224 px
(docs/models.md), ``prithvi_time`` on a cell's frames together (one token sequence, attention
across time; a joint-time encoder, below). A plug-in
module adds a model with :func:`register_model` (docs/add-an-encoder.md).

Encoder contract (what :class:`TemporalUPerNet` and the training loop rely on):

- Input: one frame batch (N, C, H, W), N = batch x frames; or, for an encoder whose attribute
  ``joint_time`` is True, the series (B, T, C, H, W) and ``pad_mask`` (B, T) (True on padded
  frames, None without padding) as a second argument, so that it may attend across a series'
  frames (padded ones must not change the real frames' output). C and the band order are
  ``InputPolicy.bands`` (PASTIS band names; a band PASTIS lacks is filled with 0; None = the
  10 PASTIS bands in their order). The values are PASTIS-normalised upstream (mean/std per
  band, ``train.settings.norm``), or reflectance / 10000 where ``InputPolicy.scale`` is
  ``reflectance``; the encoder applies no normalisation of its own.
- Size: ``InputPolicy.kind``: ``native`` (128 x 128 as stored), ``crop_windows`` (random
  ``size`` crops in training, 2 x 2 sliding windows averaged at evaluation) or ``resize``
  (bilinear to ``size``, logits resized back). The encoder's patch size must divide the size.
- Output: a list of 4 float32 (fp16/bf16 under autocast) maps (N, C_l, h, w) of one
  resolution, at least 2 x 2 (a joint-time encoder too: every frame's maps, N = B x T, frames
  in order); ``out_dims`` (attribute) lists the 4 C_l, all equal and divisible
  by ``ltae_heads`` (one L-TAE is shared by the levels). The neck rescales them by x4, x2, x1
  and x0.5 for the UPerNet head, so h = H / 16 (a ViT-16's grid) gives the paper's pyramid.
  ``gfmtune.models.contract`` checks all of it on a dummy batch when the model is built.
- ``truncate()``: drop what the forward pass never uses (called after loading weights).
- ``load_encoder_state(state, where)``: only with a checkpoint; load the dict read by
  :func:`gfmtune.models.checkpoints.read_checkpoint` for ``Checkpoint.layout`` strictly
  (:func:`gfmtune.models.checkpoints.load_strict`), naming ``where`` in errors.
- Facts (:class:`gfmtune.models.catalog.ModelFacts`, torch-free): family (table row),
  checkpoint (url, filename, sha256, size, layout), from scratch or not, relative runtime.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from torch import nn

from gfmtune.models.catalog import CHECKPOINTS, MODELS, Checkpoint, ModelFacts, facts
from gfmtune.models.checkpoints import locate, read_checkpoint
from gfmtune.models.contract import check_declaration, check_output
from gfmtune.models.croma import CROMA_BANDS, CromaOpticalEncoder
from gfmtune.models.dino import DINO_BANDS, DinoEncoder
from gfmtune.models.policies import InputPolicy
from gfmtune.models.prithvi import PRITHVI_BANDS, PrithviEncoder
from gfmtune.models.upernet import TemporalUPerNet
from gfmtune.models.utae import utae_official, utae_tiny

log = logging.getLogger(__name__)

#: Policy kinds (see the contract above) and the names a model may have (Snakemake wildcards).
POLICY_KINDS = ("native", "crop_windows", "resize")
NAME_PATTERN = re.compile(r"[a-z0-9_]+")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build one of the study's models; its family, checkpoint and
    runtime are the catalog's (:data:`gfmtune.models.catalog.MODELS`)."""

    name: str
    policy: InputPolicy
    build_encoder: Callable[[], nn.Module] | None  # None: trained from scratch (U-TAE)
    decoder_channels: int = 512
    ltae_heads: int = 16  # heads of the decoder's shared L-TAE
    build_baseline: Callable[[], nn.Module] | None = None  # whole model, for U-TAE
    #: The decoder's temporal module when the model fixes it (a variant such as
    #: ``dino_mean_tiny``, so that one run trains both); None: ``train.settings.temporal``.
    temporal: str | None = None

    @property
    def has_encoder(self) -> bool:
        return self.build_encoder is not None

    @property
    def facts(self) -> ModelFacts:
        return facts(self.name)

    @property
    def family(self) -> str:  # as in the paper's tables: CROMA, DINO, U-TAE
        return self.facts.family

    @property
    def checkpoint(self) -> Checkpoint | None:
        return self.facts.checkpoint


def _croma(size: str, out_indices: tuple[int, ...]) -> Callable[[], nn.Module]:
    return lambda: CromaOpticalEncoder(size, out_indices)


def _dino(arch: str, qkv_bias: bool, **kw: object) -> Callable[[], nn.Module]:
    return lambda: DinoEncoder(arch, qkv_bias=qkv_bias, **kw)


#: The decoder of every ``*_tiny`` model (the paper's 512 channels and 16 L-TAE heads otherwise).
TINY_DECODER = {"decoder_channels": 32, "ltae_heads": 4}

REGISTRY: dict[str, ModelSpec] = {
    "croma": ModelSpec(
        "croma", InputPolicy("crop_windows", 120, CROMA_BANDS), _croma("large", (3, 5, 7, 11))
    ),
    "croma_tiny": ModelSpec(
        "croma_tiny",
        InputPolicy("crop_windows", 24, CROMA_BANDS),
        _croma("tiny", (0, 1, 2, 3)),
        **TINY_DECODER,
    ),
    "dino": ModelSpec(
        "dino", InputPolicy("resize", 224, DINO_BANDS), _dino("small", qkv_bias=False)
    ),
    # corrected variants: CROMA at its native 128 px (no crops: cacheable when frozen), and DINO
    # with the checkpoint's qkv biases loaded instead of dropped
    "croma_native": ModelSpec(
        "croma_native", InputPolicy("native", 128, CROMA_BANDS), _croma("large", (3, 5, 7, 11))
    ),
    "dino_qkv": ModelSpec(
        "dino_qkv", InputPolicy("resize", 224, DINO_BANDS), _dino("small", qkv_bias=True)
    ),
    # the same ViT-S/16 with MoCo v3 weights, whose qkv biases are loaded (as in dino_qkv)
    "moco": ModelSpec(
        "moco", InputPolicy("resize", 224, DINO_BANDS), _dino("small", qkv_bias=True)
    ),
    "utae": ModelSpec("utae", InputPolicy("native"), None, build_baseline=utae_official),
    "utae_tiny": ModelSpec("utae_tiny", InputPolicy("native"), None, build_baseline=utae_tiny),
    # the paper's U-TAE: ShapingFT's norm="gropu" typo left the down blocks without GroupNorm
    "utae_paper": ModelSpec(
        "utae_paper",
        InputPolicy("native"),
        None,
        build_baseline=partial(utae_official, down_norm=False),
    ),
    "utae_paper_tiny": ModelSpec(
        "utae_paper_tiny",
        InputPolicy("native"),
        None,
        build_baseline=partial(utae_tiny, down_norm=False),
    ),
    "dino_tiny": ModelSpec(
        "dino_tiny",
        InputPolicy("resize", 64, DINO_BANDS),
        _dino("tiny_test", qkv_bias=False, img_size=64, out_indices=(0, 1, 2, 3)),
        **TINY_DECODER,
    ),
    # dino_tiny whose decoder pools each level over time by its mean instead of the L-TAE
    # (torchgeo's PASTIS benchmark pools single-image backbones' features over time), so that
    # one run sets the attention-based aggregation beside a pooled one (config/aggregator.yaml)
    "dino_mean_tiny": ModelSpec(
        "dino_mean_tiny",
        InputPolicy("resize", 64, DINO_BANDS),
        _dino("tiny_test", qkv_bias=False, img_size=64, out_indices=(0, 1, 2, 3)),
        **TINY_DECODER,
        temporal="mean",
    ),
    "moco_tiny": ModelSpec(
        "moco_tiny",
        InputPolicy("resize", 64, DINO_BANDS),
        _dino("tiny_test", qkv_bias=True, img_size=64, out_indices=(0, 1, 2, 3)),
        **TINY_DECODER,
    ),
    # moco on its pretraining's scale: reflectance / 10000 (SSL4EO-S12's L1C / 10000) in place of
    # PASTIS's per-band standardisation, missing bands 0 on that scale (InputPolicy.scale)
    "moco_scaled": ModelSpec(
        "moco_scaled",
        InputPolicy("resize", 224, DINO_BANDS, scale="reflectance"),
        _dino("small", qkv_bias=True),
    ),
    "moco_scaled_tiny": ModelSpec(
        "moco_scaled_tiny",
        InputPolicy("resize", 64, DINO_BANDS, scale="reflectance"),
        _dino("tiny_test", qkv_bias=True, img_size=64, out_indices=(0, 1, 2, 3)),
        **TINY_DECODER,
    ),
    # prithvi resized to 224 px as PANGAEA runs it: 14 x 14 tokens, the pretraining grid, whose
    # recomputed sin-cos embedding equals the checkpoint's frame 0 (no interpolation either way);
    # the tiny one resizes to 64, as dino_tiny and moco_tiny do
    "prithvi_224": ModelSpec(
        "prithvi_224", InputPolicy("resize", 224, PRITHVI_BANDS), partial(PrithviEncoder, "300m")
    ),
    "prithvi_224_tiny": ModelSpec(
        "prithvi_224_tiny",
        InputPolicy("resize", 64, PRITHVI_BANDS),
        partial(PrithviEncoder, "tiny", (0, 1, 2, 3)),
        **TINY_DECODER,
    ),
    # Prithvi-EO-2.0-300M at PASTIS's native 128 px (8 x 8 tokens a frame; the 16 px patches
    # divide it and the position embedding is recomputed for the grid), one frame at a time
    "prithvi": ModelSpec(
        "prithvi", InputPolicy("native", 128, PRITHVI_BANDS), partial(PrithviEncoder, "300m")
    ),
    "prithvi_tiny": ModelSpec(
        "prithvi_tiny",
        InputPolicy("native", 128, PRITHVI_BANDS),
        partial(PrithviEncoder, "tiny", (0, 1, 2, 3)),
        **TINY_DECODER,
    ),
    # the same encoder and checkpoint over time: a cell's T frames as one sequence of
    # 1 + T x 64 tokens with Prithvi's 3D position embedding (as pretrained on 4 frames), padded
    # frames masked as keys; per-frame levels out, reduced by the decoder's temporal module
    "prithvi_time": ModelSpec(
        "prithvi_time",
        InputPolicy("native", 128, PRITHVI_BANDS),
        partial(PrithviEncoder, "300m", joint_time=True),
    ),
    "prithvi_time_tiny": ModelSpec(
        "prithvi_time_tiny",
        InputPolicy("native", 128, PRITHVI_BANDS),
        partial(PrithviEncoder, "tiny", (0, 1, 2, 3), joint_time=True),
        **TINY_DECODER,
    ),
}
#: The models gfmtune ships (plug-ins register more): the paper-size ones are not ``*_tiny``.
BUILTIN = frozenset(REGISTRY)


def register_model(
    name: str,
    *,
    family: str,
    policy: InputPolicy,
    build_encoder: Callable[[], nn.Module] | None = None,
    build_baseline: Callable[[], nn.Module] | None = None,
    checkpoint: Checkpoint | None = None,
    runtime: float = 1.0,
    decoder_channels: int = 512,
    ltae_heads: int = 16,
) -> ModelSpec:
    """Add a model to the registry and its facts to the catalog (the public entry point of a
    plug-in module). A GFM gives ``build_encoder`` (an encoder honouring the contract in this
    module's docstring, decoded by the temporal UPerNet); a model trained from scratch gives
    ``build_baseline`` (the whole model, called as U-TAE is). A ValueError names the model and
    the problem."""
    problems = _registration_problems(name, family, policy, build_encoder, build_baseline)
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        problems.append(
            f"checkpoint must be a gfmtune.models.catalog.Checkpoint, not {checkpoint!r}"
        )
    elif checkpoint is not None and build_encoder is None:
        problems.append("a checkpoint needs build_encoder (a model from scratch loads none)")
    elif checkpoint is not None and CHECKPOINTS.get(checkpoint.name, checkpoint) != checkpoint:
        problems.append(f"checkpoint name {checkpoint.name!r} is taken by another checkpoint")
    if not runtime > 0:
        problems.append(f"runtime must be > 0 (relative to CROMA's), got {runtime!r}")
    if problems:
        raise ValueError(f"register_model({name!r}): " + "; ".join(problems))
    spec = ModelSpec(name, policy, build_encoder, decoder_channels, ltae_heads, build_baseline)
    MODELS[name] = ModelFacts(family, checkpoint, build_encoder is None, runtime)
    if checkpoint is not None:
        CHECKPOINTS[checkpoint.name] = checkpoint
    REGISTRY[name] = spec
    return spec


def _registration_problems(
    name: str,
    family: str,
    policy: InputPolicy,
    build_encoder: Callable[[], nn.Module] | None,
    build_baseline: Callable[[], nn.Module] | None,
) -> list[str]:
    problems = []
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        problems.append(f"the name must match {NAME_PATTERN.pattern} (lower case, digits, _)")
    elif name in REGISTRY or name in MODELS:
        problems.append("a model of this name is already registered")
    if not isinstance(family, str) or not family.strip():
        problems.append(f"family must be a non-empty table row name, got {family!r}")
    if not isinstance(policy, InputPolicy) or policy.kind not in POLICY_KINDS:
        problems.append(f"policy must be an InputPolicy of kind {' | '.join(POLICY_KINDS)}")
    if (build_encoder is None) == (build_baseline is None):
        problems.append(
            "give exactly one of build_encoder (a GFM) and build_baseline (from scratch)"
        )
    return problems


def get_spec(name: str, *, eval_resize: str = "direct") -> ModelSpec:
    """The registered model; ``eval_resize`` (``direct`` | ``via_input``, the training setting
    ``dino_eval_resize``) sets how a ``resize`` policy (DINO) brings its evaluation logits to
    the output size; other policies do not use it."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(REGISTRY))}")
    spec = REGISTRY[name]
    return replace(spec, policy=replace(spec.policy, eval_resize=eval_resize))


def build_encoder(spec: ModelSpec, weights_dir: Path | None) -> nn.Module:
    """The encoder, with pretrained weights loaded when ``weights_dir`` is given."""
    encoder = spec.build_encoder()
    check_declaration(encoder, spec)
    if weights_dir is not None:
        if spec.checkpoint is None:
            raise ValueError(f"model {spec.name!r} has no pretrained checkpoint to load")
        path = locate(spec.checkpoint, weights_dir)
        encoder.load_encoder_state(read_checkpoint(path, spec.checkpoint.layout), str(path))
        log.info("loaded %s from %s", spec.checkpoint.name, path)
    encoder.truncate()
    check_output(encoder, spec)
    return encoder


def temporal_module(spec: ModelSpec, setting: str = "ltae") -> str:
    """The temporal module ``spec``'s decoder uses: its own (a variant such as
    ``dino_mean_tiny``) or else the run's ``setting``."""
    return spec.temporal or setting


def build_model(
    name: str,
    *,
    weights_dir: Path | None = None,
    encoder_trainable: bool = True,
    temporal: str = "ltae",
    n_frames: int | None = None,
) -> nn.Module:
    """A registered model ready to train (weights loaded when ``weights_dir`` is given).

    GFMs return a :class:`TemporalUPerNet` called as ``model(x, output_size)``; U-TAE is called
    as ``model(x, days, pad_mask)``. ``temporal`` (``train.settings.temporal``) is the decoder's
    temporal module unless the model fixes its own (:func:`temporal_module`).
    """
    spec = get_spec(name)
    if spec.build_baseline is not None:
        return spec.build_baseline()
    encoder = build_encoder(spec, weights_dir)
    return TemporalUPerNet(
        encoder,
        channels=spec.decoder_channels,
        temporal=temporal_module(spec, temporal),
        n_frames=n_frames,
        ltae_heads=spec.ltae_heads,
        encoder_trainable=encoder_trainable,
    )
