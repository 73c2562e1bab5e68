"""Device choice: CPU here; on a multi-GPU workstation each job claims its own GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gfmtune.train import devices


def test_cpu_fallback_and_precision() -> None:
    assert devices.select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    cpu = torch.device("cpu")
    assert devices.amp_dtype(cpu, "auto") is None and devices.amp_dtype(cpu, "fp32") is None
    assert devices.amp_dtype(torch.device("cuda"), "auto") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision"):
        devices.amp_dtype(cpu, "fp8")


@pytest.fixture
def three_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path))
    return tmp_path


def test_concurrent_jobs_claim_distinct_gpus(three_gpus: Path) -> None:
    with devices.claimed_device() as a, devices.claimed_device() as b:
        with devices.claimed_device() as c:
            assert [a.index, b.index, c.index] == [0, 1, 2]
        # a and b still hold GPUs 0 and 1; two more jobs: one gets GPU 2, the other times out
        claim = devices.claimed_device(poll_s=0.01, timeout_s=0.05)
        with devices.claimed_device() as c2, pytest.raises(RuntimeError, match="no free GPU"):
            assert c2.index == 2
            with claim:
                pass
    with devices.claimed_device() as again:  # released locks are free again
        assert again.index == 0


def test_preset_visible_devices_are_respected(three_gpus: Path, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    monkeypatch.setattr(devices, "select_device", lambda name: torch.device("cuda"))
    with devices.claimed_device() as device:
        assert device == torch.device("cuda")
    assert not list(three_gpus.iterdir()), "no lock taken when the scheduler chose the GPU"
