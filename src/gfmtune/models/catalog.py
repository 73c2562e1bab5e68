"""Published checkpoints (REFERENCE §3) and which model needs which; free of torch imports so
that the Snakefile can read it cheaply."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Checkpoint:
    """A published weight file and the layout of its tensors."""

    name: str
    url: str
    filename: str
    sha256: str
    size: int
    layout: str  # "croma" (sub-dict s2_encoder) | "dino_teacher" | "timm"


CROMA_BASE = Checkpoint(
    "croma_base",
    "https://huggingface.co/antofuller/CROMA/resolve/main/CROMA_base.pt",
    "CROMA_base.pt",
    "0238d814b53108f3574bf1ea240e38a0a6edd46173816d9a6962070561893b63",
    777_563_846,
    "croma",
)
CROMA_LARGE = Checkpoint(
    "croma_large",
    "https://huggingface.co/antofuller/CROMA/resolve/main/CROMA_large.pt",
    "CROMA_large.pt",
    "921e69ad4069201298bb5c860dc332f31e0cb01df6864f294a79fa8f921915a7",
    2_690_426_614,
    "croma",
)
DINO_TORCHGEO = Checkpoint(
    "ssl4eo_dino_vits16_torchgeo",
    "https://hf.co/torchgeo/vit_small_patch16_224_sentinel2_all_dino/resolve/"
    "5b41dd418a79de47ac9f5be3e035405a83818a62/vit_small_patch16_224_sentinel2_all_dino-36bcc127.pth",
    "vit_small_patch16_224_sentinel2_all_dino-36bcc127.pth",
    "36bcc1273227252faf98e1d9f32c35166d3612d30dc0c15812c29bed6da9a7d5",
    90_644_269,
    "timm",
)
CHECKPOINTS = {c.name: c for c in (CROMA_BASE, CROMA_LARGE, DINO_TORCHGEO)}

#: Registry model name -> the checkpoint its encoder starts from (others train from scratch).
MODEL_CHECKPOINTS: dict[str, Checkpoint] = {
    "croma": CROMA_LARGE,
    "croma_native": CROMA_LARGE,
    "dino": DINO_TORCHGEO,
    "dino_qkv": DINO_TORCHGEO,
}

#: Registry models trained from scratch: they have no FT-Rate (one grid cell per fraction and t).
FROM_SCRATCH: tuple[str, ...] = ("utae", "utae_tiny", "utae_paper", "utae_paper_tiny")


#: Display names in tables; the paper's three, and the corrected variants. Both U-TAE forms
#: (official ``utae``, the paper's ``utae_paper``) fill the paper's U-TAE row.
FAMILIES: dict[str, str] = {
    "croma": "CROMA", "croma_tiny": "CROMA", "croma_native": "CROMA (128 px)",
    "dino": "DINO", "dino_tiny": "DINO", "dino_qkv": "DINO (qkv bias)",
    "utae": "U-TAE", "utae_tiny": "U-TAE", "utae_paper": "U-TAE", "utae_paper_tiny": "U-TAE",
}  # fmt: skip


def family_of(model: str) -> str:
    """The display name of a registry model (the paper's: CROMA, DINO, U-TAE)."""
    if model not in FAMILIES:
        raise KeyError(f"unknown model {model!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[model]
