"""What a frozen encoder's feature cache is keyed by (:mod:`gfmtune.train.feature_cache`):
everything its features depend on, so that a cache is reused only where it gives the features
the encoder would compute. The key digests the encoder's weights and code (the source of the
modules defining its classes, the segmentation model's and its input policy's; gfmtune's and
torch's versions), the input policy, the window geometry of an evaluation cache, the frames
(the timestep manifest's bytes), the normalisation and the input scaling (``InputPolicy.scale``),
the store's content digest (not its path), the precision and the storage format.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import sys
from pathlib import Path

import torch
import zarr
from torch import nn

import gfmtune
from gfmtune.models.policies import InputPolicy
from gfmtune.models.registry import ModelSpec
from gfmtune.verify import file_digest

FORMAT = "npy-memmap-1"  # in the key and complete.json: a cache of another format is not read


def store_content_digest(store: Path) -> str | None:
    """The store's ``content_digest`` attribute (a digest of its source files), if recorded."""
    return zarr.open_group(str(store), mode="r").attrs.get("content_digest")


def _module_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _source(module_name: str) -> str:
    """The source text of a module (its file's bytes, hex, when the source is not at hand;
    empty for a module not imported under that name)."""
    module = sys.modules.get(module_name)
    if module is None:
        return ""
    try:
        return inspect.getsource(module)
    except (OSError, TypeError):
        file = getattr(module, "__file__", None)  # none for ``python -c``'s classes
        return Path(file).read_bytes().hex() if file else ""


def code_digest(model: nn.Module, policy: InputPolicy) -> str:
    """A digest of the source of every module defining a class of the model's encoder, of its
    submodules (their bases included), of the model (its ``encode`` makes the cached levels) and
    of the input policy; torch's own are left out (its version is in the key)."""
    classes = [type(policy), type(model), *(type(m) for m in model.encoder.modules())]
    names = {c.__module__ for cls in classes for c in cls.__mro__}
    names = sorted(n for n in names if n.partition(".")[0] not in ("torch", "builtins"))
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}\n{_source(name)}\n".encode())
    return digest.hexdigest()


def package_version() -> str:
    """gfmtune's version: ``gfmtune.__version__``, else the installed distribution's."""
    try:
        return getattr(gfmtune, "__version__", None) or importlib.metadata.version("gfmtune")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"  # run from a source tree: the code digest still applies


def cache_key(
    spec: ModelSpec,
    model: nn.Module,
    content_digest: str,
    timesteps: Path,
    norm: str,
    nodata: str,
    amp: torch.dtype | None,
    windows: list[tuple[int, int]] | None = None,
    cpu_numerics: str = "native",
) -> str:
    """The cache's name: a digest of everything the features of ``model``'s (frozen) encoder
    depend on, its weights and code included; ``windows``: the corners of an evaluation cache's
    windows (their side is the policy's size)."""
    facts = {
        "format": FORMAT,
        "model": spec.name,
        "encoder": _module_digest(model.encoder),
        "code": code_digest(model, spec.policy),
        "policy": repr(spec.policy),
        "versions": [package_version(), torch.__version__],
        "timesteps": file_digest(timesteps, "sha256"),
        "store": content_digest,
        "norm": norm,
        "nodata": nodata,
        "dtype": str(amp or torch.float32),
        "windows": None if windows is None else [list(corner) for corner in windows],
    }
    if spec.policy.scale != "standardise":  # the default keeps the keys caches were made under
        facts["scale"] = spec.policy.scale
    if cpu_numerics != "native":  # native runs keep the keys their caches were written under
        facts["cpu_numerics"] = cpu_numerics
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]
