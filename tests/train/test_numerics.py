"""cpu_numerics: portable runs ignore the CPU-dependent kernel choices that native runs follow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gfmtune.cli import main
from gfmtune.train import numerics
from gfmtune.train.job import Cell
from tests.train.conftest import FAST, inputs, train_argv
from tests.train.conftest import train_data as train_data  # the fixture, for this module

UTAE = Cell("utae_tiny", None, "100", 1)

#: a few AdamW steps of each tiny model on fixed data; prints one digest of all its weights
STEPS = """
import hashlib, sys, torch
from gfmtune.train import numerics
from gfmtune.models.registry import build_model
numerics.apply(sys.argv[1])
torch.set_num_threads(1)
digest = hashlib.sha256()
for name, c, hw in (("utae_tiny", 10, 32), ("croma_tiny", 12, 24)):
    torch.manual_seed(0)
    model = build_model(name)
    x, y = torch.randn(2, 4, c, hw, hw), torch.randint(0, 20, (2, hw, hw))
    days = torch.arange(4.0).repeat(2, 1) * 10
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        out = model(x, days) if name == "utae_tiny" else model(x, (hw, hw))
        torch.nn.functional.cross_entropy(out, y).backward()
        opt.step()
    for p in model.parameters():
        digest.update(p.detach().numpy().tobytes())
print(digest.hexdigest())
"""
#: settings that make torch's libraries pick other kernels, as another CPU would
OTHER_CPU = {"ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}


def trained_digest(mode: str, extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
    env |= (numerics.PORTABLE_ENV if mode == "portable" else {}) | extra
    done = subprocess.run(
        [sys.executable, "-c", STEPS, mode], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_portable_weights_ignore_the_kernels_another_cpu_would_pick() -> None:
    native = trained_digest("native", {})
    assert trained_digest("native", OTHER_CPU) != native  # the check can see a difference
    portable = trained_digest("portable", {})
    assert portable != native
    assert trained_digest("portable", OTHER_CPU) == portable


def test_portable_needs_its_environment_before_python_starts(monkeypatch) -> None:
    for key in numerics.PORTABLE_ENV:
        monkeypatch.delenv(key, raising=False)
    assert numerics.missing_environment("portable") == numerics.PORTABLE_ENV
    assert numerics.missing_environment("native") == {}
    assert numerics.missing_environment("portable", dict(numerics.PORTABLE_ENV)) == {}
    with pytest.raises(ValueError, match="ATEN_CPU_CAPABILITY='default'"):
        numerics.apply("portable")  # this process's torch already runs its CPU's kernels
    numerics.apply("native")
    assert torch.backends.mkldnn.enabled
    with pytest.raises(ValueError, match="choose from native, portable"):
        numerics.apply("fast")


def test_train_command_restarts_itself_with_portable_numerics(
    train_data: Path, tmp_path: Path, caplog
) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(replace(FAST, epochs=1, cpu_numerics="portable").to_dict()))
    argv = train_argv(inputs(train_data, "100", 1), UTAE, settings, tmp_path / "cell")
    env = {k: v for k, v in os.environ.items() if k not in numerics.PORTABLE_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "gfmtune", *argv], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "restarting with ATEN_CPU_CAPABILITY='default'" in done.stderr
    facts = json.loads((tmp_path / "cell" / "provenance.json").read_text())["cpu_numerics"]
    assert facts["torch_cpu_capability"] == "DEFAULT" and facts["mkldnn"] is False
    assert facts["MKL_CBWR"] == "COMPATIBLE"

    # called in a process that has already started, the command cannot restart: it says why
    assert main(train_argv(inputs(train_data, "100", 1), UTAE, settings, tmp_path / "b")) == 1
    assert "needs its environment set before Python starts" in caplog.text
