"""The registry's models as test parameters, so that a new entry is tested without editing a
test (as timm's tests run over ``list_models()``). Read when the tests are collected: models a
test registers itself (plug-ins) are not among them.

Toy-size models (``*_tiny``, docs/models.md) are fast on a CPU; a test that needs the real
architecture runs the paper-size ones."""

from __future__ import annotations

from gfmtune.models.registry import REGISTRY


def is_tiny(name: str) -> bool:
    return name.endswith("_tiny")


#: Every model with a pretrained-style encoder (the GFMs and their variants), registry order.
ENCODER_MODELS = [name for name, spec in REGISTRY.items() if spec.has_encoder]
TINY_ENCODERS = [name for name in ENCODER_MODELS if is_tiny(name)]
PAPER_ENCODERS = [name for name in ENCODER_MODELS if not is_tiny(name)]
#: Every model whose input policy resizes the image to the encoder's size (DINO's).
RESIZE_MODELS = [name for name, spec in REGISTRY.items() if spec.policy.kind == "resize"]
