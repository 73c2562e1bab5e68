"""``gfmtune train``'s DataLoaders: the shuffle depends on the order generator alone (not on
workers, their persistence or a resume), and ``workers: auto`` sizes them from the job's CPUs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from gfmtune.config import ConfigError
from gfmtune.data.dataset import PastisZarrDataset
from gfmtune.train import loader as train_loader
from gfmtune.train.loader import build_loader, loader_workers
from gfmtune.train.settings import TrainSettings
from tests.train.conftest import FAST, inputs
from tests.workflow_helpers import REPO, run_snakemake


def _orders(loader: torch.utils.data.DataLoader, epochs: int) -> list[list[int]]:
    return [[int(p) for b in loader for p in b["patch_id"]] for _ in range(epochs)]


def test_shuffle_ignores_workers_and_resumes(train_data: Path) -> None:
    data = inputs(train_data)
    ds = PastisZarrDataset.training(data.store, data.label_split, data.timesteps)
    orders = {}
    for workers in (0, 2):
        order = torch.Generator().manual_seed(7)
        loader = build_loader(ds, 4, replace(FAST, workers=workers), True, order, drop_last=True)
        orders[workers] = _orders(loader, 3)
    assert orders[0] == orders[2], "persistent workers draw no seed from the order generator"
    assert orders[0][0] != orders[0][1], "each epoch is shuffled anew"

    order = torch.Generator().manual_seed(7)
    first = _orders(build_loader(ds, 4, FAST, True, order, drop_last=True), 1)
    saved = order.get_state()  # as state.pt keeps it after epoch 1
    resumed = torch.Generator().set_state(saved)
    rest = _orders(build_loader(ds, 4, replace(FAST, workers=2), True, resumed, drop_last=True), 2)
    assert first + rest == orders[0], "a resumed run shuffles as an uninterrupted one"


def test_evaluation_loaders_leave_the_global_rng_alone(train_data: Path) -> None:
    data = inputs(train_data)
    ds = PastisZarrDataset.evaluation(data.store, data.timesteps)
    torch.manual_seed(0)
    for _ in build_loader(ds, 2, FAST, False):
        pass
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(0).get_state())


@pytest.mark.parametrize(
    ("slurm", "affinity", "threads", "workers"),
    [("16", 64, 4, 15), ("64", 2, 2, 15), ("8", 64, 64, 7), ("1", 8, 8, 0), (None, 4, 64, 3),
     (None, 64, 8, 7), ("", 1, 1, 0)],
)  # fmt: skip
def test_auto_workers_follow_the_jobs_cpus(
    monkeypatch: pytest.MonkeyPatch, slurm: str | None, affinity: int, threads: int,
    workers: int,
) -> None:  # fmt: skip
    """SLURM's grant, else the CPUs the job may run on, at most its torch threads."""
    if slurm is None:
        monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    else:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", slurm)
    monkeypatch.setattr(train_loader.os, "sched_getaffinity", lambda pid: set(range(affinity)))
    monkeypatch.setattr(train_loader.torch, "get_num_threads", lambda: threads)
    assert loader_workers("auto") == workers
    assert loader_workers(3) == 3


@pytest.mark.parametrize(
    ("args", "threads"),
    [(("--cores", "64"), 16), (("--cores", "32", "--resources", "gpu=4"), 8),
     (("--cores", "2"), 2), (("--cores", "8", "--config", "train={settings: {workers: 3}}"), 4)],
)  # fmt: skip
def test_a_training_job_gets_its_share_of_the_cores(
    tmp_path: Path, args: tuple[str, ...], threads: int
) -> None:
    """The jobs that run at once (one per GPU) share the machine's cores, at most the auto
    workers and the main process each."""
    result = run_snakemake(tmp_path, "-n", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    train = result.stdout.split("rule train:", 1)[1].split("\n\n", 1)[0]
    assert f"threads: {threads}\n" in train


def test_the_slurm_profile_asks_for_the_cpus_of_the_auto_workers() -> None:
    """15 workers at most, so that at t = 35 (20-29 samples/s each) the data bound a step at
    18-27 ms, and one CPU more for the main process."""
    assert train_loader.MAX_AUTO_WORKERS == 15
    cpus = train_loader.MAX_AUTO_WORKERS + 1
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.v8+.yaml").read_text())
    assert profile["set-threads"] == {"train": cpus, "train_variant": cpus}
    assert profile["cores"] == cpus  # the cap of a job's threads, a dry run's too
    # SLURM allocates the threads (tests/test_slurm.py checks them in the dry run)
    assert profile["set-resources"]["train"]["cpus_per_task"] == "threads"


def test_workers_setting_takes_auto_or_a_count() -> None:
    assert TrainSettings().workers == "auto"
    assert TrainSettings.from_mapping({"workers": 0}).workers == 0
    with pytest.raises(ConfigError, match=r'workers: .*allowed: integer >= 0 or "auto"'):
        TrainSettings.from_mapping({"workers": "all"})
