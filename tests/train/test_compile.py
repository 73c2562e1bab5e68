"""``compile: true``: the model compiled in place trains as the eager one does."""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest
import torch

from gfmtune.bench.measure import COMPONENTS, REFERENCE, Shape, changes, synthetic_batch
from gfmtune.models.registry import build_model, get_spec
from gfmtune.train.devices import compile_model
from gfmtune.train.loop import build_optimizer, build_scheduler, train_epoch
from gfmtune.train.settings import TrainSettings


def _epoch(name: str, compiled: bool) -> float:
    """Mean loss of one epoch of two 32 px batches of 3 frames from seed 0 (the second batch's
    loss depends on the first step's update)."""
    torch.manual_seed(0)
    spec, settings = get_spec(name), TrainSettings()
    model = build_model(name)
    keys = list(model.state_dict())
    if compiled:
        compile_model(model, spec.has_encoder)
    assert list(model.state_dict()) == keys, "compiled in place: same state-dict keys"
    optimizer = build_optimizer(model, spec, None, settings)
    scheduler = build_scheduler(optimizer, 2, settings)
    cpu = torch.device("cpu")
    batches = [synthetic_batch(2, Shape(2, 3, 32), cpu) for _ in range(2)]
    crops = torch.Generator().manual_seed(0)
    return train_epoch(model, spec, batches, optimizer, scheduler, cpu, None, crops)


def test_compiled_graphs_train_as_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dynamo's graphs and AOT autograd's backward (``aot_eager``: all of torch.compile but the
    code generation) give U-TAE's epoch loss."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    assert _epoch("utae_tiny", compiled=True) == pytest.approx(_epoch("utae_tiny", False), 1e-5)


def test_bench_measures_compile_on_gpus_only() -> None:
    """``bench-train --components``: the compiled reference runs where compile is a question
    (CUDA), not on CPU, where inductor's C++ builds take minutes per tiny model."""
    (path,) = [c for c in COMPONENTS if c.name == "reference+compile"]
    assert path.settings == replace(REFERENCE.settings, compile=True)
    spec = get_spec("utae_tiny")
    assert changes(path, spec, "scratch", torch.device("cuda"))
    assert not changes(path, spec, "scratch", torch.device("cpu"))
