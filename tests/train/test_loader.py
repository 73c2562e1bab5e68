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
from gfmtune.train import loader
from gfmtune.train.loader import build_loader, loader_workers
from gfmtune.train.settings import TrainSettings
from tests.train.conftest import FAST, inputs

REPO = Path(__file__).resolve().parents[2]


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
    ("slurm", "affinity", "workers"),
    [("16", 64, 15), ("64", 2, 15), ("8", 64, 7), ("1", 8, 0), (None, 4, 3), ("", 1, 0)],
)
def test_auto_workers_follow_the_jobs_cpus(
    monkeypatch: pytest.MonkeyPatch, slurm: str | None, affinity: int, workers: int
) -> None:
    if slurm is None:
        monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    else:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", slurm)
    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: set(range(affinity)))
    assert loader_workers("auto") == workers
    assert loader_workers(3) == 3


def test_the_workflow_asks_for_the_cpus_of_the_auto_workers() -> None:
    """15 workers at most, so that at t = 35 (20-29 samples/s each) the data bound a step at
    18-27 ms, and one CPU more for the main process from the train rule and the SLURM profile."""
    assert loader.MAX_AUTO_WORKERS == 15
    cpus = loader.MAX_AUTO_WORKERS + 1
    rule = (REPO / "rules" / "train.smk").read_text()
    assert f'threads: {cpus} if TRAIN_WORKERS == "auto"' in rule
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.v8+.yaml").read_text())
    assert profile["set-threads"] == {"train": cpus, "train_variant": cpus}
    assert profile["set-resources"]["train"]["cpus_per_task"] == cpus


def test_workers_setting_takes_auto_or_a_count() -> None:
    assert TrainSettings().workers == "auto"
    assert TrainSettings.from_mapping({"workers": 0}).workers == 0
    with pytest.raises(ConfigError, match=r'workers: .*allowed: integer >= 0 or "auto"'):
        TrainSettings.from_mapping({"workers": "all"})
