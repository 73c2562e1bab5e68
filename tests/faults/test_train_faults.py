"""Fault matrix, training side (issue 9): unsafe, corrupt or foreign ``state.pt``, ``best.pt``
and feature-cache files, a store of other content at the same path, a kill, and the cost of a
resumed cell.

Each case checks the exit code (or the exception), a message naming the file, and that no output
a rerun would trust is left: a cell has ``metrics.json`` only when its metrics equal an
uninterrupted run's, and a bad file is renamed aside, never used again nor deleted.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from gfmtune.cli import main
from gfmtune.data.store import convert
from gfmtune.results.aggregate import collect
from gfmtune.results.maps import cell_folder
from gfmtune.tensorio import save_tensors
from gfmtune.train.feature_cache import CachedFeatures
from gfmtune.train.feature_key import store_content_digest
from gfmtune.train.job import Cell, CellJob, Inputs
from tests.train.conftest import (
    FAST,
    Interrupted,
    inputs,
    interrupt_after,
    kill_mid_training,
    train_argv,
)
from tests.train.conftest import train_data as train_data  # the fixture, for this module

SETTINGS = replace(FAST, epochs=2)
UTAE = Cell("utae_tiny", None, "100", 1)
DINO = Cell("dino_tiny", 0.0, "100", 1)  # frozen with a fixed input: the feature cache applies


class Payload:
    """Pickles as a call of ``os.system``: what a malicious ``state.pt`` would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def utae_inputs(base: Path) -> Inputs:
    return inputs(base, UTAE.label_percent, UTAE.timesteps)


def dino_inputs(base: Path, cache: Path | None, store: Path | None = None) -> Inputs:
    data = inputs(base, DINO.label_percent, DINO.timesteps)
    return replace(data, store=store or data.store, feature_cache=cache)


def cli_train(data: Inputs, cell: Cell, out: Path, settings=SETTINGS) -> int:
    """``gfmtune train`` in this process; its exit code."""
    path = out.parent / f"{out.name}.settings.json"
    path.write_text(json.dumps(settings.to_dict()))
    return main(train_argv(data, cell, path, out))


def error_line(caplog: pytest.LogCaptureFixture) -> str:
    """The one line the command logged as its error."""
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    return errors[0]


def warned(caplog: pytest.LogCaptureFixture, *words: str) -> bool:
    """Whether one warning holds all ``words``."""
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return any(all(w in message for w in words) for message in warnings)


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def same_result(a: dict, b: dict) -> bool:
    return a["test"] == b["test"] and a["best_epoch"] == b["best_epoch"]


def close_result(a: dict, b: dict) -> bool:
    """Equal up to float rounding (cached features against the encoder run each time)."""
    keys = ("miou", "miou_paper", "oa")
    return [a["test"][k] for k in keys] == pytest.approx([b["test"][k] for k in keys], rel=1e-5)


def aside(path: Path, why: str = "corrupt") -> list[Path]:
    """The renamed copies of ``path``."""
    return sorted(path.parent.glob(f"{path.name}.{why}-*"))


def garbage(path: Path, size: int = 4096) -> None:
    path.write_bytes(bytes(range(256)) * (size // 256) + bytes(size % 256))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def payload(path: Path, marker: Path) -> None:
    torch.save({"model": Payload(marker)}, path)


#: ways to spoil a torch file in place; ``marker`` is what a payload that ran would create
SPOIL: dict[str, Callable[[Path, Path], None]] = {
    "pickled-payload": payload,
    "truncated": lambda path, marker: truncate(path),
    "garbage": lambda path, marker: garbage(path),
    "empty": lambda path, marker: path.write_bytes(b""),
    "missing": lambda path, marker: path.unlink(),
}


@pytest.fixture(scope="module")
def reference(train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Uninterrupted U-TAE and DINO (cached) cells, and DINO's feature cache."""
    base = tmp_path_factory.mktemp("reference")
    cache = base / "cache"
    for name, cell, data in (("utae", UTAE, utae_inputs(train_data)),
                             ("dino", DINO, dino_inputs(train_data, cache))):  # fmt: skip
        CellJob(cell, data, SETTINGS, base / name, progress=False).run()
    (key,) = [p for p in cache.iterdir() if p.is_dir()]
    return {"utae": base / "utae", "dino": base / "dino", "cache": key}


@pytest.fixture(scope="module")
def states(train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``state.pt`` after one epoch: of the U-TAE cell, and of the same cell with another seed."""
    base = tmp_path_factory.mktemp("states")
    found = {}
    for name, cell in (("own", UTAE), ("other-cell", replace(UTAE, seed=1))):
        with pytest.MonkeyPatch.context() as mp, pytest.raises(Interrupted):
            interrupt_after(mp, 1)
            CellJob(cell, utae_inputs(train_data), SETTINGS, base / name, progress=False).run()
        found[name] = base / name / "state.pt"
    return found


@pytest.mark.parametrize(
    "fault", ["pickled-payload", "truncated", "garbage", "empty", "other-cell"]
)
def test_bad_state_is_set_aside_and_the_cell_starts_over(
    fault: str, train_data: Path, reference: dict, states: dict, tmp_path: Path, caplog
) -> None:
    out, marker = tmp_path / "cell", tmp_path / "payload-ran"
    state = out / "state.pt"
    out.mkdir()
    if fault == "other-cell":
        shutil.copy(states["other-cell"], state)
    else:
        shutil.copy(states["own"], state)
        SPOIL[fault](state, marker)

    assert cli_train(utae_inputs(train_data), UTAE, out) == 0
    assert not marker.exists(), "the pickled payload ran"
    result = metrics(out)
    assert same_result(result, metrics(reference["utae"])) and result["attempts"] == 1
    assert not state.exists()  # finished: no resumable state left
    if fault == "other-cell":
        assert warned(caplog, str(state), "another job") and not aside(state)
        return
    assert warned(caplog, str(state), "starting the cell over")
    (kept,) = aside(state)
    if fault == "pickled-payload":  # the test's payload is real: an unsafe load would run it
        torch.load(kept, weights_only=False)
        assert marker.exists()


@pytest.fixture(scope="module")
def untested(train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A U-TAE cell folder with every epoch saved (state.pt, best.pt), stopped before its test,
    whose state.pt refers to best.pt for its best weights (as one saved after best.pt took
    them; a state.pt saved with a new best holds them itself, and its best.pt is rewritten)."""
    out = tmp_path_factory.mktemp("untested") / "cell"

    def stop(*args: object) -> None:
        raise Interrupted("stopped before the test")

    with pytest.MonkeyPatch.context() as mp, pytest.raises(Interrupted):
        mp.setattr(CellJob, "_finish", stop)
        CellJob(UTAE, utae_inputs(train_data), SETTINGS, out, progress=False).run()
    state = torch.load(out / "state.pt", weights_only=True)
    save_tensors(state | {"best": None}, out / "state.pt")
    return out


@pytest.mark.parametrize("fault", ["garbage", "truncated", "missing"])
def test_bad_best_at_finish_invalidates_the_cell(
    fault: str, train_data: Path, reference: dict, untested: Path, tmp_path: Path, caplog
) -> None:
    out = tmp_path / "cell"
    shutil.copytree(untested, out)
    best = out / "best.pt"
    SPOIL[fault](best, tmp_path / "payload-ran")

    assert cli_train(utae_inputs(train_data), UTAE, out) == 1
    line = error_line(caplog)
    assert str(best) in line and "rerun snakemake" in line and "retrain" in line
    assert not any((out / name).exists() for name in ("metrics.json", "state.pt", "best.pt"))
    assert len(aside(out / "state.pt", "invalid")) == 1  # resuming would skip to the test again
    assert len(aside(best)) == (fault != "missing")

    assert cli_train(utae_inputs(train_data), UTAE, out) == 0  # the next run retrains it
    assert same_result(metrics(out), metrics(reference["utae"]))


@pytest.fixture(scope="module")
def maps_run(train_data: Path, reference: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder whose one cell is the reference U-TAE cell, with its tables/miou.csv."""
    run = tmp_path_factory.mktemp("maps") / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "s2.zarr").symlink_to(train_data / "s2.zarr")
    (run / "manifests").mkdir()
    (run / "manifests" / "timesteps").symlink_to(train_data / "timesteps")
    folder = cell_folder(run / "cells", UTAE.model, UTAE.ft_rate, UTAE.label_percent,
                         UTAE.timesteps, UTAE.seed)  # fmt: skip
    shutil.copytree(reference["utae"], folder)
    (run / "tables").mkdir()
    collect([folder / "metrics.json"]).to_csv(run / "tables" / "miou.csv", index=False)
    return run


@pytest.mark.parametrize("fault", ["pickled-payload", "truncated", "garbage"])
def test_bad_best_at_predict_maps_invalidates_the_cell(
    fault: str, train_data: Path, maps_run: Path, tmp_path: Path, caplog
) -> None:
    run, marker = tmp_path / "run", tmp_path / "payload-ran"
    shutil.copytree(maps_run, run, symlinks=True)
    (out,) = [p.parent for p in (run / "cells").rglob("metrics.json")]
    SPOIL[fault](out / "best.pt", marker)
    predict_maps = ["predict-maps", "--run", str(run), "--no-progress"]

    assert main(predict_maps) == 1
    assert not marker.exists(), "the pickled payload ran"
    line = error_line(caplog)
    assert str(out / "best.pt") in line and "rerun snakemake" in line
    assert not (out / "metrics.json").exists() and not (out / "best.pt").exists()
    assert len(aside(out / "metrics.json", "invalid")) == 1 and len(aside(out / "best.pt")) == 1
    assert not (run / "maps" / "cells.csv").exists()

    assert cli_train(utae_inputs(train_data), UTAE, out) == 0  # what snakemake reruns
    assert main(predict_maps) == 0 and (run / "maps" / "cells.csv").exists()


def cache_copy(reference: dict, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the reference feature cache (its root) and its first level's array."""
    root = tmp_path / "cache"
    shutil.copytree(reference["cache"], root / reference["cache"].name)
    return root, root / reference["cache"].name / "level0.npy"


@pytest.mark.parametrize("fault", ["truncated", "garbage", "killed-build"])
def test_bad_cache_file_is_rebuilt(
    fault: str, train_data: Path, reference: dict, tmp_path: Path, caplog
) -> None:
    root, bad = cache_copy(reference, tmp_path)
    folder, good_size = bad.parent, bad.stat().st_size
    if fault == "truncated":  # shorter than its header says
        truncate(bad)
    elif fault == "garbage":  # same size, the header unreadable
        garbage(bad, good_size)
    else:  # a build killed with half of its rows done: resumed, not set aside
        (folder / "complete.json").unlink()
        marks = folder / "done.bin"
        done = marks.read_bytes()
        marks.write_bytes(bytes(len(done) // 2) + done[len(done) // 2 :])
        folder.rename(folder.with_name(f"{folder.name}.partial"))

    assert cli_train(dino_inputs(train_data, root), DINO, tmp_path / "cell") == 0
    if fault == "killed-build":
        assert not aside(folder)
    else:
        assert warned(caplog, str(bad), "to be rebuilt") and len(aside(folder)) == 1
    assert bad.stat().st_size == good_size and np.load(bad).shape[0] > 0
    assert same_result(metrics(tmp_path / "cell"), metrics(reference["dino"]))


def test_unreadable_cache_file_in_training_names_it_and_the_next_run_recovers(
    train_data: Path, reference: dict, tmp_path: Path, caplog, monkeypatch
) -> None:
    root, bad = cache_copy(reference, tmp_path)
    out, data = tmp_path / "cell", dino_inputs(train_data, root)
    workers = replace(SETTINGS, workers=1)  # the error crosses a DataLoader worker
    open_arrays, spoiled = CachedFeatures._open, []

    def spoil_first(self) -> list:  # the file spoilt under a running job, after its checks
        if not spoiled:
            garbage(bad, bad.stat().st_size)
            spoiled.append(bad)
        return open_arrays(self)

    monkeypatch.setattr(CachedFeatures, "_open", spoil_first)
    assert cli_train(data, DINO, out, workers) == 1
    line = error_line(caplog)
    assert str(bad) in line and "rerun" in line
    assert not (out / "metrics.json").exists() and len(aside(bad.parent)) == 1

    monkeypatch.undo()
    assert cli_train(data, DINO, out, workers) == 0
    assert same_result(metrics(out), metrics(reference["dino"]))


def test_cache_of_other_store_content_at_the_same_path_is_not_reused(
    train_data: Path, reference: dict, tmp_path: Path, caplog
) -> None:
    (root, _), store = cache_copy(reference, tmp_path), tmp_path / "s2.zarr"
    shutil.copytree(train_data / "s2.zarr", store)
    built = {p: p.stat().st_mtime_ns for p in root.rglob("*.npy")}
    assert cli_train(dino_inputs(train_data, root, store), DINO, tmp_path / "a") == 0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.npy")} == built  # same content: reused
    a = metrics(tmp_path / "a")
    assert same_result(a, metrics(reference["dino"]))

    # dataset B: A with its bands reversed, converted to the same path
    raw = tmp_path / "raw_b"
    shutil.copytree(next((train_data / "raw").rglob("DATA_S2")).parent, raw)
    for series in (raw / "DATA_S2").glob("*.npy"):
        np.save(series, np.load(series)[:, ::-1])
    shutil.rmtree(store)
    convert(raw, store, threads=2, progress=False)
    assert store_content_digest(store) != store_content_digest(train_data / "s2.zarr")
    caplog.clear()
    assert cli_train(dino_inputs(train_data, root, store), DINO, tmp_path / "b") == 0
    assert len([p for p in root.iterdir() if p.is_dir()]) == 2  # B's cache, beside A's
    b = metrics(tmp_path / "b")
    assert cli_train(dino_inputs(train_data, None, store), DINO, tmp_path / "b_plain") == 0
    assert close_result(b, metrics(tmp_path / "b_plain")) and not close_result(b, a)


def test_store_without_content_digest_trains_uncached(
    train_data: Path, reference: dict, tmp_path: Path, caplog
) -> None:
    store, root = tmp_path / "s2.zarr", tmp_path / "cache"
    shutil.copytree(train_data / "s2.zarr", store)
    del zarr.open_group(str(store), mode="r+").attrs["content_digest"]  # a store without one
    assert cli_train(dino_inputs(train_data, root, store), DINO, tmp_path / "cell") == 0
    assert warned(caplog, str(store), "predates content digests", "rebuild the store")
    assert not root.exists() or not any(root.iterdir())
    assert close_result(metrics(tmp_path / "cell"), metrics(reference["dino"]))


def test_kill_then_resume_ends_as_uninterrupted(
    train_data: Path, reference: dict, tmp_path: Path
) -> None:
    out, settings = tmp_path / "cell", tmp_path / "settings.json"
    settings.write_text(json.dumps(SETTINGS.to_dict()))
    kill_mid_training(train_argv(utae_inputs(train_data), UTAE, settings, out), out)
    assert not (out / "metrics.json").exists()
    spent = torch.load(out / "state.pt", weights_only=True)["loop"]["seconds"]

    assert cli_train(utae_inputs(train_data), UTAE, out) == 0
    result = metrics(out)
    assert same_result(result, metrics(reference["utae"]))
    assert result["attempts"] == 2 and result["wall_seconds"] > spent >= 1.0  # a slowed epoch


def test_cost_adds_up_all_attempts(
    train_data: Path, reference: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, pause = tmp_path / "cell", 0.5
    job = CellJob(UTAE, utae_inputs(train_data), SETTINGS, out, progress=False)
    interrupt_after(monkeypatch, 1, pause)
    with pytest.raises(Interrupted):
        job.run()
    first = torch.load(out / "state.pt", weights_only=True)["loop"]
    assert first["attempts"] == 1 and first["seconds"] >= pause

    monkeypatch.undo()
    interrupt_after(monkeypatch, SETTINGS.epochs, pause)  # slowed the same, not interrupted
    tick = time.time()
    result = job.run()
    second = time.time() - tick
    assert result["attempts"] == 2
    assert first["seconds"] + pause <= result["wall_seconds"] <= first["seconds"] + second + 1e-3
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["wall_seconds"] == result["wall_seconds"] and provenance["attempts"] == 2
    assert same_result(result, metrics(reference["utae"]))


def test_a_retry_of_a_failure_that_repeats_stops_at_once(train_data: Path, tmp_path: Path,
                                                          caplog) -> None:  # fmt: skip
    """Snakemake retries (attempt > 1) are for time-outs and memory; a cell whose attempt
    failed on bad input is not rerun by them, but is by a new Snakemake run (attempt 1)."""
    out = tmp_path / "cell"
    bad = tmp_path / "10.csv"
    bad.write_text("patch_id,fold\n999999,1\n")  # a patch the store does not hold
    data = inputs(train_data)
    args = ["train", "--store", str(data.store), "--label-split", str(bad), "--timesteps",
            str(data.timesteps), "--model", "utae_tiny", "--out", str(out),
            "--no-progress"]  # fmt: skip
    with caplog.at_level(logging.ERROR):
        assert main(args) == 1
    failed = json.loads((out / "failed.json").read_text())
    assert failed["type"] == "ManifestError" and "999999" in failed["error"]
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main([*args, "--attempt", "2"]) == 1
    assert "not retried: attempt 1 failed in a way a retry repeats (ManifestError" in caplog.text
    bad.write_text(pd.read_csv(data.label_split).to_csv(index=False))  # fixed
    assert main([*args, "--attempt", "1", "--settings-json", '{"epochs": 1, "workers": 0}']) == 0
    assert not (out / "failed.json").exists() and (out / "metrics.json").exists()
