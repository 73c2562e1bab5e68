"""Published checkpoints (docs/protocol.md, "Models") and the facts of each registry model (family,
checkpoint, from scratch or not, relative runtime): the one table of them, free of torch
imports so that the Snakefile can read it cheaply. docs/add-an-encoder.md has the contract."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Checkpoint:
    """A published weight file and the layout of its tensors."""

    name: str
    url: str  # the publisher's copy, tried first
    filename: str
    sha256: str
    size: int
    layout: str  # "croma" (sub-dict s2_encoder) | "dino_teacher" | "timm" | "prithvi_mae"
    mirrors: tuple[str, ...] = ()  # copies of the same bytes, tried in order when url fails
    #: True when sha256 and size were both read from the publisher's own record (the hub's Git
    #: LFS pointer of the file at ``url``'s commit); False when either comes from elsewhere.
    #: ``gfmtune params`` shows it (column ``weights``); ``source`` says where they come from.
    confirmed: bool = False
    source: str = ""

    @property
    def sources(self) -> tuple[str, ...]:
        """Every URL of the file, in the order ``gfmtune weights`` tries them."""
        return (self.url, *self.mirrors)


# CROMA: the authors' hub repository antofuller/CROMA at commit 0dd28e3d, the revision torchgeo
# pinned both files at while adding CROMA (github.com/microsoft/torchgeo, pull request #2370:
# torchgeo/models/croma.py in its commits 427c4fe5 to 305754d2, 2024-10-25 to 28); the README of
# github.com/Anish-lab-blip/SatQuery-AI names the same revision (0dd28e3d633b). The hub was not
# reachable here: that this commit's files have the sha256 below is not checked against the hub.
# Mirror: torchgeo's copies on the hub, as merged (b2b65164, 2024-10-29), each named, as torchgeo
# names its weights, after the first 8 hex digits of its sha256: 0238d814 and 921e69ad, those of
# the sha256 below. sha256 and size, not the URL, pin the content: the weights rule checks them,
# whichever source gives the file.
CROMA_REVISION = "0dd28e3d633bd6715856ae9890e8c49360040598"
CROMA_SOURCE = "not read from the hub; torchgeo's mirrors are named after its sha256's first 8 hex"
CROMA_BASE = Checkpoint(
    "croma_base",
    f"https://huggingface.co/antofuller/CROMA/resolve/{CROMA_REVISION}/CROMA_base.pt",
    "CROMA_base.pt",
    "0238d814b53108f3574bf1ea240e38a0a6edd46173816d9a6962070561893b63",
    777_563_846,
    "croma",
    mirrors=(
        "https://huggingface.co/torchgeo/croma/resolve/"
        "387883f08af79d777167519c57cd826eda89a16f/CROMA_base-0238d814.pt",
    ),
    source=CROMA_SOURCE,
)
CROMA_LARGE = Checkpoint(
    "croma_large",
    f"https://huggingface.co/antofuller/CROMA/resolve/{CROMA_REVISION}/CROMA_large.pt",
    "CROMA_large.pt",
    "921e69ad4069201298bb5c860dc332f31e0cb01df6864f294a79fa8f921915a7",
    2_690_426_614,
    "croma",
    mirrors=(
        "https://huggingface.co/torchgeo/croma/resolve/"
        "92cb1a0f4e34c6c01558baf070197c01255382f6/CROMA_large-921e69ad.pt",
    ),
    source=CROMA_SOURCE,
)
DINO_TORCHGEO = Checkpoint(
    "ssl4eo_dino_vits16_torchgeo",
    "https://hf.co/torchgeo/vit_small_patch16_224_sentinel2_all_dino/resolve/"
    "5b41dd418a79de47ac9f5be3e035405a83818a62/vit_small_patch16_224_sentinel2_all_dino-36bcc127.pth",
    "vit_small_patch16_224_sentinel2_all_dino-36bcc127.pth",
    "36bcc1273227252faf98e1d9f32c35166d3612d30dc0c15812c29bed6da9a7d5",
    90_644_269,
    "timm",
    confirmed=True,
    source="the hub's LFS pointer of the file at commit 5b41dd4 (torchgeo's repository)",
)
# torchgeo ViTSmall16_Weights.SENTINEL2_ALL_MOCO (torchgeo/models/vit.py): SSL4EO-S12 MoCo v3,
# 13 S2 L1C bands, timm vit_small_patch16_224; sha256 and size from the LFS pointer of HF commit
# 1cb683f. torchgeo loads it into timm's default ViT-S/16 (qkv bias) missing head.* only: the
# keys of DINO_TORCHGEO's file (qkv biases and final norm included, no head).
MOCO_TORCHGEO = Checkpoint(
    "ssl4eo_moco_vits16_torchgeo",
    "https://hf.co/torchgeo/vit_small_patch16_224_sentinel2_all_moco/resolve/"
    "1cb683f6c14739634cdfaaceb076529adf898c74/vit_small_patch16_224_sentinel2_all_moco-67c9032d.pth",
    "vit_small_patch16_224_sentinel2_all_moco-67c9032d.pth",
    "67c9032df0449ae37f93c51696bcae0c6dc3485103deb44b4669e9897b90409c",
    90_668_909,
    "timm",
    confirmed=True,
    source="the hub's LFS pointer of the file at commit 1cb683f (torchgeo's repository)",
)
#: Prithvi-EO-2.0-300M at the HF revision 9eb1b110 (2025-10-09; the file is unchanged since it
#: was added on 2024-12-03, commit ebfff1d). sha256: the hub's own "Git LFS Details" of the file
#: (its page at revision c6f9ef27, which shows that sha256); torchgeo's PrithviV2_Weights
#: (torchgeo/models/prithvi.py, microsoft/torchgeo 8cd6f3c1) names its copy ``-faab2c8b`` and
#: checks that prefix. Size: only a third-party project's docs give the bytes; the hub shows
#: "1.33 GB" and a 135-byte pointer (a 10-digit size), both consistent, hence unconfirmed. The
#: weights rule refuses a file that differs, so an error here stops the download, never loads one.
PRITHVI_EO_V2_300M = Checkpoint(
    "prithvi_eo_v2_300m",
    "https://huggingface.co/ibm-nasa-geospatial/Prithvi-EO-2.0-300M/resolve/"
    "9eb1b1102806593963daa333bcc491b1c6f8562f/Prithvi_EO_V2_300M.pt",
    "Prithvi_EO_V2_300M.pt",
    "faab2c8b776f0723f93431747603a7ec586a54fc45473613b4322c29752486e7",
    1_326_658_396,
    "prithvi_mae",
    source="sha256: the hub's LFS details (revision c6f9ef27); size: a third-party project's docs",
)
CHECKPOINTS = {
    c.name: c for c in (CROMA_BASE, CROMA_LARGE, DINO_TORCHGEO, MOCO_TORCHGEO, PRITHVI_EO_V2_300M)
}


@dataclass(frozen=True)
class ModelFacts:
    """The torch-free facts of one registry model that the Snakefile and the tables need."""

    family: str  # table row (display name): CROMA, DINO, U-TAE, or a plug-in's
    checkpoint: Checkpoint | None = None  # the weights its encoder starts from
    from_scratch: bool = False  # no pretrained encoder: no FT-Rate, one cell per fraction and t
    runtime: float = 1.0  # training time relative to CROMA's (SLURM time limits)


_UTAE = ModelFacts("U-TAE", from_scratch=True, runtime=0.25)
_UTAE_TINY = ModelFacts("U-TAE", from_scratch=True)

#: Registry name -> facts; :func:`gfmtune.models.registry.register_model` adds plug-in models.
#: Both U-TAE forms (official ``utae``, the paper's ``utae_paper``) fill the paper's U-TAE row;
#: the tiny models keep runtime 1 (they only run on CPUs, where no time limit matters).
MODELS: dict[str, ModelFacts] = {
    "croma": ModelFacts("CROMA", CROMA_LARGE),
    "croma_tiny": ModelFacts("CROMA"),
    "croma_native": ModelFacts("CROMA (128 px)", CROMA_LARGE),
    "dino": ModelFacts("DINO", DINO_TORCHGEO, runtime=0.5),
    "dino_tiny": ModelFacts("DINO"),
    "dino_qkv": ModelFacts("DINO (qkv bias)", DINO_TORCHGEO, runtime=0.5),
    "dino_mean_tiny": ModelFacts("DINO (mean over time)"),
    "moco": ModelFacts("MoCo", MOCO_TORCHGEO, runtime=0.5),
    "moco_tiny": ModelFacts("MoCo"),
    # MoCo on its pretraining's scale (reflectance / 10000, InputPolicy.scale): the same network
    "moco_scaled": ModelFacts("MoCo (reflectance)", MOCO_TORCHGEO, runtime=0.5),
    "moco_scaled_tiny": ModelFacts("MoCo (reflectance)"),
    "utae": _UTAE,
    "utae_tiny": _UTAE_TINY,
    "utae_paper": _UTAE,
    "utae_paper_tiny": _UTAE_TINY,
}

# Prithvi resized to 224 px (14 x 14 tokens, as PANGAEA feeds it PASTIS): 197 tokens a frame
# instead of 65. Forward FLOPs, counted as for prithvi below: 1694 GFLOPs, 3.1 x prithvi's and
# 1.55 x CROMA's; 1.7 leaves a margin.
MODELS |= {
    "prithvi_224": ModelFacts("Prithvi (224 px)", PRITHVI_EO_V2_300M, runtime=1.7),
    "prithvi_224_tiny": ModelFacts("Prithvi (224 px)"),
}

# Prithvi-EO-2.0-300M (ViT-L/16, blocks 0-23 at native 128 px: 65 tokens a frame). Runtime: its
# forward FLOPs (whole model, UPerNet decoder included, training view) are 0.50 x CROMA's
# (blocks 0-11 on 120 px crops: 225 tokens a frame), counted with torch's FlopCounterMode on
# the meta device (548 vs 1093 GFLOPs for 2 samples x 6 frames); 0.6 leaves a margin, since
# the runtime sets SLURM time limits.
# prithvi_time (one sequence of 1 + t x 64 tokens a cell): forward FLOPs 1.03 x prithvi's at
# t = 6 (566 vs 548 GFLOPs, 2 samples, counted as above) and 1.32 x at t = 35 (3811 vs 2894),
# so 0.66 x CROMA's at the study's longest series; 0.8 leaves a margin. Its own table row.
MODELS |= {
    "prithvi": ModelFacts("Prithvi", PRITHVI_EO_V2_300M, runtime=0.6),
    "prithvi_tiny": ModelFacts("Prithvi"),
    "prithvi_time": ModelFacts("Prithvi (over time)", PRITHVI_EO_V2_300M, runtime=0.8),
    "prithvi_time_tiny": ModelFacts("Prithvi (over time)"),
}


def facts(model: str) -> ModelFacts:
    """The facts of a registry model; a KeyError naming the known ones if unknown."""
    if model not in MODELS:
        raise KeyError(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    return MODELS[model]


def family_of(model: str) -> str:
    """The display name of a registry model (the paper's: CROMA, DINO, U-TAE)."""
    return facts(model).family
