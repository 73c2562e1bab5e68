"""A cell's provenance: every installed package, the features that pick kernels, the code's
revision and whether its tree had changes, and the GPU's facts when one ran the cell."""

from __future__ import annotations

import json
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

import gfmtune
from gfmtune.cli import main
from gfmtune.train import provenance
from tests.workflow_helpers import REPO


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)  # fmt: skip


def test_collect_records_every_package_and_the_cpu_features() -> None:
    prov = provenance.collect({"lr": 1.0}, 3, torch.device("cpu"), 1.23456, 1)
    installed = {d.metadata["Name"] for d in metadata.distributions()}
    assert set(prov["packages"]) == installed and len(installed) > 20
    assert prov["packages"]["numpy"] == np.__version__
    assert prov["packages"]["torch"] == metadata.version("torch")
    assert prov["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert prov["numpy_simd"]["baseline"] and set(prov["numpy_simd"]["enabled"]) <= set(
        np._core._multiarray_umath.__cpu_dispatch__)  # fmt: skip
    assert prov["cuda"] is None and prov["gfmtune_version"] == gfmtune.__version__
    assert prov["git_revision"] and isinstance(prov["git_dirty"], bool)
    json.dumps(prov)  # a provenance.json


def test_cuda_facts_when_a_gpu_ran_the_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA H100")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 92400)
    facts = provenance.cuda_facts(torch.device("cuda", 0))
    assert facts == {"cuda": torch.version.cuda, "cudnn": 92400, "gpu": "NVIDIA H100"}


def test_git_state_of_a_clean_and_a_changed_tree(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "a")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True, check=True).stdout.strip()  # fmt: skip
    assert provenance.git_revision(tmp_path) == head
    assert provenance.git_dirty(tmp_path) is False
    (tmp_path / "b.py").write_text("y = 2\n")  # untracked counts
    assert provenance.git_dirty(tmp_path) is True


def test_git_state_without_a_repository_or_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert provenance.git_revision(tmp_path) is None and provenance.git_dirty(tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git
    assert provenance.git_revision() is None and provenance.git_dirty() is None


def test_version_is_pyprojects(capsys: pytest.CaptureFixture) -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'\nversion = "{gfmtune.__version__}"\n' in pyproject
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"gfmtune {gfmtune.__version__}\n"


def test_version_from_metadata_outside_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gfmtune, "__file__", str(tmp_path / "lib" / "gfmtune" / "__init__.py"))
    monkeypatch.setattr(metadata, "version", lambda name: "9.8.7")
    assert gfmtune._version() == "9.8.7"

    def absent(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", absent)
    assert gfmtune._version() == "0+unknown"
