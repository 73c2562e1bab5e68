"""Checkpoint cadence and stopping on SIGTERM: ``state.pt`` when due, a stop mid-epoch saves at
the step boundary, and the resumed cell ends exactly as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from gfmtune.train import cell_state, job
from gfmtune.train.job import Cell, CellJob
from gfmtune.train.loader import skippable
from tests.train.conftest import FAST, Interrupted, inputs, interrupt_after, train_argv

SETTINGS = replace(FAST, checkpoint_minutes=10)  # the default cadence: no save in a short run

SIGTERM_AT = """
import os, signal, sys
import gfmtune.train.job as job
epoch, step, passes = int(sys.argv[1]), int(sys.argv[2]), []
train_epoch = job.train_epoch
def hooked(*args, **kwargs):
    passes.append(1)
    on_step, steps = kwargs["on_step"], []
    def hook():
        on_step()
        steps.append(1)
        if (len(passes), len(steps)) == (epoch, step):
            os.killpg(os.getpgid(0), signal.SIGTERM)  # as SLURM: workers too
    kwargs["on_step"] = hook
    return train_epoch(*args, **kwargs)
job.train_epoch = hooked
from gfmtune.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _job(base: Path, out: Path, cell: Cell, settings=SETTINGS) -> CellJob:
    return CellJob(cell, inputs(base, cell.label_percent, cell.timesteps), settings, out,
                   progress=False)  # fmt: skip


@pytest.mark.parametrize(("ft_rate", "workers"), [(0.0, 0), (1.0, 2)])
def test_sigterm_mid_epoch_then_resume_equals_uninterrupted(
    ft_rate: float, workers: int, train_data: Path, tmp_path: Path
) -> None:
    """``gfmtune train`` gets SIGTERM in its second epoch, after step 3 (its loader's workers
    too: its own process group, as under SLURM): it saves, exits 1, and the rerun ends as an
    uninterrupted run."""
    cell = Cell("croma_tiny", ft_rate, "100", 1)  # random crops: the crops generator matters
    settings = replace(SETTINGS, workers=workers)
    reference = _job(train_data, tmp_path / "ref", cell, settings).run()

    out, path = tmp_path / "stopped", tmp_path / "settings.json"
    path.write_text(json.dumps(settings.to_dict()))
    argv = train_argv(inputs(train_data, cell.label_percent, cell.timesteps), cell, path, out)
    run = subprocess.run([sys.executable, "-c", SIGTERM_AT, "2", "3", *argv],
                         capture_output=True, text=True, timeout=300,
                         start_new_session=True)  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "stopped by SIGTERM: saved state at epoch 2 step 3; rerun to resume" in run.stderr
    assert not (out / "metrics.json").exists()
    saved = torch.load(out / "state.pt", weights_only=True)
    assert saved["loop"]["epoch"] == 1 and saved["loop"]["partial"]["step"] == 3
    encoder = [k for k in saved["model"] if k.startswith("encoder.")]
    assert bool(encoder) == (ft_rate > 0), "a frozen encoder's tensors are not saved"

    resumed = _job(train_data, out, cell, settings).run()
    assert resumed["test"] == reference["test"] and resumed["val_best"] == reference["val_best"]
    assert resumed["attempts"] == 2
    ref_hist, new_hist = (pd.read_csv(d / "history.csv") for d in (tmp_path / "ref", out))
    assert ref_hist.train_loss.tolist() == new_hist.train_loss.tolist()
    ref_best, new_best = (torch.load(d / "best.pt") for d in (tmp_path / "ref", out))
    assert ref_best.keys() == new_best.keys()
    assert all(torch.equal(ref_best[k], new_best[k]) for k in ref_best)


def test_stop_after_the_last_step_saves_before_validation(
    train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT at an epoch's last step: saved with every step done, before validating; the
    rerun validates and ends as an uninterrupted run."""
    cell = Cell("utae_tiny", None, "10", 6)
    settings = replace(SETTINGS, epochs=2)
    reference = _job(train_data, tmp_path / "ref", cell, settings).run()
    train_epoch, steps = job.train_epoch, []

    def interrupted(model, spec, loader, *args, **kwargs) -> float:
        on_step = kwargs["on_step"]

        def hook() -> None:
            on_step()
            steps.append(len(loader))
            if len(steps) == len(loader):
                os.kill(os.getpid(), signal.SIGINT)

        kwargs["on_step"] = hook
        return train_epoch(model, spec, loader, *args, **kwargs)

    monkeypatch.setattr(job, "train_epoch", interrupted)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(
        cell_state.JobStopped, match="SIGINT: saved state at epoch 1 step"
    ) as stopped:
        _job(train_data, tmp_path / "cell", cell, settings).run()
    assert f"step {steps[0]}; rerun to resume" in str(stopped.value)
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored
    saved = torch.load(tmp_path / "cell" / "state.pt", weights_only=True)["loop"]
    assert saved["partial"]["step"] == len(steps) == steps[0] and saved["history"] == []
    monkeypatch.undo()
    other_cadence = replace(settings, checkpoint_minutes=0)  # changes no result: still resumes
    resumed = _job(train_data, tmp_path / "cell", cell, other_cadence).run()
    assert resumed["test"] == reference["test"] and resumed["attempts"] == 2


@pytest.mark.parametrize(("minutes", "saved_after"), [(10, [3]), (0, [1, 2, 3, 4, 5, 6])])
def test_state_is_saved_when_due(
    minutes: float, saved_after: list, train_data: Path, tmp_path: Path, monkeypatch
) -> None:
    now, saves = [0.0], []
    monkeypatch.setattr(cell_state, "_clock", lambda: now[0])
    train_epoch, checkpoint = job.train_epoch, CellJob._checkpoint

    def epoch_of_4_minutes(*args, **kwargs) -> float:
        now[0] += 240.0
        return train_epoch(*args, **kwargs)

    def recorded(self, t, order, state) -> None:
        saves.append(state["epoch"])
        checkpoint(self, t, order, state)

    monkeypatch.setattr(job, "train_epoch", epoch_of_4_minutes)
    monkeypatch.setattr(CellJob, "_checkpoint", recorded)
    settings = replace(SETTINGS, epochs=6, checkpoint_minutes=minutes)
    best = _job(train_data, tmp_path, Cell("utae_tiny", None, "10", 1), settings).run()
    # 10: at 12 min, not at 24 (the last epoch) unless a best found since is to go to best.pt
    if best["best_epoch"] > saved_after[-1]:
        saved_after = sorted({*saved_after, 6})
    assert saves == saved_after  # 0: every epoch


def test_a_new_best_is_kept_on_the_host_not_written(
    train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No state is due in 2 epochs (``checkpoint_minutes`` 10): a kill then leaves no best.pt
    (each new best was a 0.8 GB write for CROMA-large fine-tuned); the rerun ends as an
    uninterrupted run."""
    cell = Cell("utae_tiny", None, "10", 6)
    reference = _job(train_data, tmp_path / "ref", cell).run()
    interrupt_after(monkeypatch, 2)
    with pytest.raises(Interrupted):
        _job(train_data, tmp_path / "cell", cell).run()
    assert not any((tmp_path / "cell" / name).exists() for name in ("best.pt", "state.pt"))
    monkeypatch.undo()
    assert _job(train_data, tmp_path / "cell", cell).run()["test"] == reference["test"]


def test_kill_between_state_and_best_resumes_to_the_states_best(
    train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """state.pt holds the best weights best.pt does not hold yet and is written first (after
    the last epoch too, though no state is due then): a kill before best.pt resumes to the
    weights that state scored (here the rerun only tests), and best.pt ends as an uninterrupted
    run's."""
    cell, settings = Cell("utae_tiny", None, "10", 6), replace(SETTINGS, epochs=1)  # 10 min
    reference = _job(train_data, tmp_path / "ref", cell, settings).run()
    out, save, written = tmp_path / "cell", cell_state.save_tensors, []

    def killed_at_best(tensors: dict, path: Path) -> None:
        written.append(Path(path).name)
        if Path(path).name == cell_state.BEST:
            raise Interrupted("killed before best.pt")
        save(tensors, path)

    monkeypatch.setattr(cell_state, "save_tensors", killed_at_best)
    with pytest.raises(Interrupted):
        _job(train_data, out, cell, settings).run()
    assert written == [cell_state.STATE, cell_state.BEST] and not (out / cell_state.BEST).exists()
    assert torch.load(out / cell_state.STATE, weights_only=True)["best"] is not None
    monkeypatch.undo()
    resumed = _job(train_data, out, cell, settings).run()
    assert resumed["test"] == reference["test"] and resumed["attempts"] == 2
    ref_best, new_best = (torch.load(d / cell_state.BEST) for d in (tmp_path / "ref", out))
    assert ref_best.keys() == new_best.keys()
    assert all(torch.equal(ref_best[k], new_best[k]) for k in ref_best)


class _Recorded(Dataset):
    def __init__(self, n: int) -> None:
        self.n, self.loaded = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        self.loaded.append(i)
        return i


def test_skipped_batches_keep_the_order_and_are_not_loaded() -> None:
    def loader(data: _Recorded) -> DataLoader:
        order = torch.Generator().manual_seed(3)
        return DataLoader(data, batch_size=3, shuffle=True, generator=order, drop_last=True)

    full = [b.tolist() for b in loader(_Recorded(11))]
    data = _Recorded(11)
    resumed = loader(data)
    skippable(resumed).skip = 2 * 3
    assert len(resumed) == len(full) == 3
    assert [b.tolist() for b in resumed] == full[2:]
    assert sorted(data.loaded) == sorted(full[2])  # only the batch not yet done is loaded
    assert len(list(resumed)) == 3  # the skip lasts one pass
