"""Device choice: CPU here; on a multi-GPU workstation each job claims its own GPU."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import torch

from gfmtune.cli import main
from gfmtune.train import devices


def test_cpu_fallback_and_precision() -> None:
    assert devices.select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    cpu = torch.device("cpu")
    assert devices.amp_dtype(cpu, "auto") is None and devices.amp_dtype(cpu, "fp32") is None
    assert devices.amp_dtype(torch.device("cuda"), "auto") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision"):
        devices.amp_dtype(cpu, "fp8")


@pytest.fixture
def current(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A fake CUDA with three GPUs; the returned list holds the current device, last."""
    current = [0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[-1])
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: current.append(index))
    return current


@pytest.fixture
def three_gpus(current: list[int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path))
    return tmp_path


def test_concurrent_jobs_claim_distinct_gpus(three_gpus: Path, current: list[int]) -> None:
    with devices.claimed_device() as a, devices.claimed_device() as b:
        with devices.claimed_device() as c:
            assert [a.index, b.index, c.index] == [0, 1, 2]
            assert current[-3:] == [0, 1, 2]  # each claim made its GPU the current device
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
    with devices.claimed_device() as device:
        assert device == torch.device("cuda", 0)  # the one visible GPU
    assert not list(three_gpus.iterdir()), "no lock taken when the scheduler chose the GPU"


@pytest.mark.parametrize(("name", "index"), [("cuda:2", 2), ("cuda", 1), ("auto", 1)])
def test_the_jobs_gpu_becomes_the_current_device(
    current: list[int], monkeypatch: pytest.MonkeyPatch, name: str, index: int
) -> None:
    """Else the DataLoader's pin-memory thread, and all that runs on the current device, opens
    a CUDA context on GPU 0 too. ``cuda`` and a scheduler's one GPU: the current device."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6,7")
    current.append(1)  # as torch.cuda.set_device(1) earlier in the process would leave it
    with devices.claimed_device(name) as device:
        assert device == torch.device("cuda", index) and current[-1] == index
    with devices.claimed_device("cpu") as device:
        assert device == torch.device("cpu") and current[-1] == index


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def lock_folder(current: list[int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The GPU lock folder of three fake GPUs, not yet created."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path / "shared" / "locks"))
    return tmp_path / "shared" / "locks"


def claim(claimed: AbstractContextManager[torch.device]) -> torch.device:
    """The device a job claims (released at once)."""
    with claimed as device:
        return device


def test_lock_folder_and_files_serve_every_user_whatever_the_umask(lock_folder: Path) -> None:
    """A folder of mode 1777 (like /tmp) and lock files of 0666: under a umask of 0022 or 0077
    they were 0755 / 0644, so another user's job failed with PermissionError."""
    with umask(0o077):
        with devices.claimed_device(), devices.claimed_device():
            assert mode(lock_folder) == 0o1777
        lock_folder.joinpath("gpu2.lock").touch(mode=0o644)  # ours, by an older gfmtune
        with devices.claimed_device(), devices.claimed_device(), devices.claimed_device():
            pass
    assert {p.name: mode(p) for p in lock_folder.iterdir()} == dict.fromkeys(
        ["gpu0.lock", "gpu1.lock", "gpu2.lock"], 0o666
    )


@pytest.fixture
def backend_flags(monkeypatch: pytest.MonkeyPatch):
    """Restore the process-wide flags that :func:`devices.configure_backends` sets."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # recorded, so restored afterwards
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
    torch.backends.cudnn.benchmark = saved[2]
    torch.use_deterministic_algorithms(saved[3], warn_only=saved[4])


@pytest.mark.parametrize(
    ("device", "precision", "cudnn_tf32"),
    [
        ("cuda", "fp32", False),
        ("cuda", "auto", True),
        ("cuda", "bf16", True),
        ("cpu", "auto", False),
    ],
)
def test_tf32_only_under_autocast(
    backend_flags, device: str, precision: str, cudnn_tf32: bool
) -> None:
    """fp32 runs (no autocast) use IEEE fp32 matrix products and cuDNN convolutions; under
    autocast torch's defaults (TF32 for cuDNN only). The flags exist on CPU builds too."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not cudnn_tf32
    devices.configure_backends(torch.device(device), precision, deterministic=False)
    assert torch.backends.cuda.matmul.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 is cudnn_tf32


@pytest.mark.parametrize(
    ("device", "deterministic", "benchmark"),
    [("cuda", False, True), ("cuda", True, False), ("cpu", False, False)],
)
def test_cudnn_benchmarks_the_static_shapes_on_cuda_unless_deterministic(
    backend_flags, device: str, deterministic: bool, benchmark: bool
) -> None:
    torch.backends.cudnn.benchmark = not benchmark
    devices.configure_backends(torch.device(device), "auto", deterministic)
    assert torch.backends.cudnn.benchmark is benchmark


def test_deterministic_warns_where_torch_has_no_deterministic_kernel(backend_flags) -> None:
    torch.backends.cudnn.benchmark = True
    devices.configure_backends(torch.device("cpu"), "auto", deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.backends.cudnn.benchmark is False
    with pytest.warns(UserWarning, match="deterministic"):  # put_ has none, on CPU too
        torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))
    devices.configure_backends(torch.device("cpu"), "auto", deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()
    torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]))


def test_deterministic_keeps_a_valid_preset_cublas_workspace(backend_flags, monkeypatch) -> None:
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    devices.configure_backends(torch.device("cpu"), "fp32", deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    devices.configure_backends(torch.device("cpu"), "fp32", deterministic=True)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_paper_size_models_do_not_fall_back_to_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    devices.refuse_cpu_fallback(cpu, "auto", "croma_tiny")  # tiny: fine on the CPU
    devices.refuse_cpu_fallback(cpu, "cpu", "croma")  # asked for
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(RuntimeError, match=r"no GPU for model 'utae_paper': .*--device cpu"):
        devices.refuse_cpu_fallback(cpu, "auto", "utae_paper")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert "CUDA_VISIBLE_DEVICES is empty" in devices.no_gpu_reason()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert "built for CUDA 12.8" in devices.no_gpu_reason()
    assert "driver too old" in devices.no_gpu_reason()
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in devices.no_gpu_reason()


def test_gfmtune_train_refuses_a_paper_size_model_on_the_cpu_with_auto(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``--device auto`` resolves to the CPU here: the refusal must see what was asked for."""
    args = ["train", "--store", str(tmp_path / "none.zarr"), "--label-split",
            str(tmp_path / "10.csv"), "--timesteps", str(tmp_path / "6.csv"), "--model", "utae",
            "--device", "auto", "--out", str(tmp_path / "cell")]  # fmt: skip
    (tmp_path / "6.csv").write_text("patch_id,frames,days\n1,0 1 2 3 4 5,0 5 10 15 20 25\n")
    with caplog.at_level(logging.ERROR):
        assert main(args) == 1
    assert "no GPU for model 'utae'" in caplog.text
    assert not (tmp_path / "cell").exists()
