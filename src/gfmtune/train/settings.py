"""Training settings: the paper's protocol as defaults (docs/protocol.md), overridable by config;
validated against the configuration schema's ``train.settings`` (:mod:`gfmtune.config`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from gfmtune.config import validate_settings


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training job needs besides its grid cell. Defaults: the paper."""

    epochs: int = 80
    batch_size: int = 8
    drop_last: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    milestones: tuple[float, ...] = (0.6, 0.9)  # fractions of all iterations
    gamma: float = 0.1
    val_every: int = 1
    val_patches: int | None = None  # validate on this many patches of fold 4 (None: all of it)
    eval_batch_size: int = 8  # validation and test; metrics do not depend on it (CROMA: x 4)
    eval_cache: bool = False  # frozen CROMA: validation/test window features computed once
    select_metric: str = "miou_paper"  # validation metric that picks the best checkpoint
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU | bf16 | fp32 (no TF32)
    compile: bool = False  # torch.compile the encoder and decoder (U-TAE: whole); off: unmeasured
    deterministic: bool = False  # torch's deterministic algorithms where they exist
    cpu_numerics: str = "native"  # native: the CPU's fastest kernels | portable: alike on all
    norm: str = "paper"  # paper | train_folds
    nodata: str = "keep"  # keep | zero
    temporal: str = "ltae"  # ltae | linear | mean | max (over time, no parameters)
    workers: int | str = "auto"  # DataLoader workers | auto: the job's CPUs - 1, at most 15
    keep_checkpoint: str = "best"  # best: keep the best weights (trained tensors only) | none
    checkpoint_minutes: float = 10.0  # state.pt at an epoch end this long after the last save
    encoder_frames_per_call: int | None = None  # encoder micro-batch (None: all B x T frames)
    activation_checkpointing: bool = False  # recompute encoder activations in backward
    auto_memory: bool = True  # on GPU OOM, switch once to chunks + checkpointing
    feature_cache: bool = True  # frozen encoder with a fixed input: compute features once
    dino_eval_resize: str = "direct"  # DINO eval logits 56 -> 128 | via_input: 56 -> 224 -> 128
    val_resident: bool | str = "auto"  # validation fold kept on the device | auto: CUDA, if fits
    frame_draw: str = "none"  # none: the manifest's frames | authors: their seeded 50-frame draw
    tensorboard: bool = False  # history rows as event files in <cell>/tensorboard/ (extra)
    mlflow: str = ""  # MLflow tracking URI or file-store folder; "": off (extra)

    @classmethod
    def from_mapping(cls, values: dict | None) -> TrainSettings:
        """Settings from a mapping validated against the schema (:class:`ConfigError` if not)."""
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in (values or {}).items()}
        validate_settings(values)
        for key in ("betas", "milestones"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def from_json(cls, path: Path) -> TrainSettings:
        return cls.from_mapping(json.loads(Path(path).read_text()))

    @classmethod
    def from_arguments(cls, path: Path | None, text: str | None) -> TrainSettings:
        """Settings from ``gfmtune train``'s ``--settings`` file, else its ``--settings-json``."""
        return cls.from_json(path) if path else cls.from_mapping(json.loads(text or "{}"))

    def to_dict(self) -> dict:
        return asdict(self)
