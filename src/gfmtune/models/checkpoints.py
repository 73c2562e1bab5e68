"""Pretrained checkpoints: how to verify them and load them strictly.

The weights cannot be downloaded on this project's machines; the loaders are tested on
checkpoints generated with the official key names (see :mod:`gfmtune.models.catalog`).

Files are read with ``torch.load(weights_only=True)``, except the layouts of
:data:`PICKLED_LAYOUTS`, which pickle Python objects besides tensors: those are unpickled only
after their size and sha256 matched a catalogued :class:`Checkpoint`, so an unknown or altered
file is refused before any of it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from gfmtune.models.catalog import CHECKPOINTS, Checkpoint
from gfmtune.verify import mismatch

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not fit the model; the message says how to fix."""


#: Layouts that need ``torch.load(weights_only=False)`` (the original DINO file pickles its args).
PICKLED_LAYOUTS = ("dino_teacher",)


def checkpoint_mismatch(path: Path, ckpt: Checkpoint) -> str | None:
    """What differs between ``path`` and ``ckpt``'s published size and sha256, or None."""
    return mismatch(path, ckpt.size, f"sha256:{ckpt.sha256}")


def locate(ckpt: Checkpoint, folder: Path, verify: bool = True) -> Path:
    """Path of ``ckpt`` in ``folder``, checked for size and sha256; a clear error otherwise."""
    path = Path(folder) / ckpt.filename
    advice = (
        f"download {ckpt.url} (sha256 {ckpt.sha256}, {ckpt.size:,} bytes) and put it at "
        f"{path}, or point weights.dir to a folder that holds it"
    )
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; {advice}")
    if verify and (problem := checkpoint_mismatch(path, ckpt)):
        raise CheckpointError(f"{path}: {problem}; {advice}")
    return path


def encoder_state(raw: Mapping, layout: str, where: str) -> dict[str, torch.Tensor]:
    """The encoder's tensors out of a raw checkpoint object, by layout."""
    if layout == "croma":
        if "s2_encoder" not in raw:
            raise CheckpointError(f"{where}: no 's2_encoder' entry (keys: {sorted(raw)[:8]})")
        return dict(raw["s2_encoder"])
    if layout == "dino_teacher":
        if "teacher" not in raw:
            raise CheckpointError(f"{where}: no 'teacher' entry (keys: {sorted(raw)[:8]})")
        teacher = raw["teacher"]
        return {
            k.removeprefix("backbone."): v
            for k, v in teacher.items()
            if not k.startswith(("head.", "backbone.head."))
        }
    if layout == "timm":
        state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else raw
        return {k: v for k, v in state.items() if not k.startswith("head.")}
    if layout == "prithvi_mae":
        return prithvi_encoder_state(raw, where)
    raise ValueError(f"unknown checkpoint layout {layout!r}")


def prithvi_encoder_state(raw: Mapping, where: str) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` tensors of a Prithvi MAE state dict, prefix stripped; the MAE decoder's
    ``decoder.*`` tensors (mask token, decoder position embedding, blocks, prediction head) are
    dropped and logged; any other key is an error."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{where}: not a Prithvi MAE state dict but a {type(raw).__name__}")
    decoder = sorted(k for k in raw if k.startswith("decoder."))
    other = sorted(k for k in raw if not k.startswith(("encoder.", "decoder.")))
    if other:
        raise CheckpointError(
            f"{where}: not a Prithvi MAE state dict: {len(other)} key(s) outside encoder.* and "
            f"decoder.*, e.g. {other[:3]}"
        )
    if decoder:
        log.info(
            "%s: dropped the %d tensors of the MAE decoder (%s)",
            where,
            len(decoder),
            _first(decoder, 3),
        )
    return {k.removeprefix("encoder."): v for k, v in raw.items() if k.startswith("encoder.")}


def _first(keys: list[str], n: int) -> str:
    """The first ``n`` of ``keys`` for a log line, `` ...`` when there are more."""
    return ", ".join(keys[:n]) + (" ..." if len(keys) > n else "")


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    where: str,
    ignore: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
) -> list[str]:
    """Load ``state`` into ``module`` requiring equal keys and shapes; returns ignored keys.

    Keys of ``state`` ending with one of ``ignore`` and absent from the module are dropped
    (and logged); module tensors whose key starts with one of ``optional`` (ones the forward
    pass never uses) may be absent from ``state`` and keep their values (logged); any other
    missing, extra or misshaped tensor raises naming ``where``.
    """
    expected = module.state_dict()
    dropped = [k for k in state if k not in expected and k.endswith(ignore)] if ignore else []
    absent = sorted(set(expected) - set(state))
    kept = [k for k in absent if k.startswith(optional)] if optional else []
    missing = [k for k in absent if k not in kept]
    extra = sorted(set(state) - set(expected) - set(dropped))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s), e.g. {missing[:3]}")
    if extra:
        problems.append(f"unexpected {len(extra)} tensor(s), e.g. {extra[:3]}")
    if shapes:
        problems.append(f"misshaped {len(shapes)} tensor(s), e.g. {shapes[:3]}")
    if problems:
        raise CheckpointError(
            f"{where}: does not fit {type(module).__name__}: " + "; ".join(problems)
        )
    if dropped:
        log.warning(
            "%s: dropped %d tensor(s) the model has no place for: %s",
            where,
            len(dropped),
            _first(dropped, 4),
        )
    if kept:
        log.warning(
            "%s: %d unused tensor(s) not in the file, left as initialised: %s",
            where,
            len(kept),
            ", ".join(kept),
        )
    loaded = {k: v for k, v in state.items() if k not in dropped} | {k: expected[k] for k in kept}
    module.load_state_dict(loaded, strict=True)
    return dropped


def catalogued(path: Path) -> Checkpoint:
    """The catalog's checkpoint with ``path``'s file name; a :class:`CheckpointError` if none."""
    for ckpt in CHECKPOINTS.values():
        if ckpt.filename == path.name:
            return ckpt
    raise CheckpointError(
        f"{path}: not a catalogued checkpoint (known files: "
        f"{', '.join(sorted(c.filename for c in CHECKPOINTS.values()))}); its layout pickles "
        "Python objects, so it is read only once its sha256 matches the catalog's"
    )


def read_checkpoint(
    path: Path, layout: str, expected: Checkpoint | None = None
) -> dict[str, torch.Tensor]:
    """Read a checkpoint file and return the encoder's tensors (see :func:`encoder_state`).

    A layout of :data:`PICKLED_LAYOUTS` is unpickled only after the file matched ``expected``
    (default: the catalog's checkpoint of that file name); else nothing of it is unpickled.
    """
    path = Path(path)
    weights_only = layout not in PICKLED_LAYOUTS
    if not weights_only:
        ckpt = expected or catalogued(path)
        if problem := checkpoint_mismatch(path, ckpt):
            raise CheckpointError(
                f"{path}: refused, not unpickled: {problem} (catalog entry {ckpt.name}); "
                f"download {ckpt.url} again"
            )
    try:
        raw = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # torch raises many types for corrupt files
        raise CheckpointError(f"{path}: cannot read checkpoint ({err})") from err
    return encoder_state(raw, layout, str(path))
