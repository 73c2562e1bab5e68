"""Optional MLflow runs of cells, read back from the file store as a user would: settings,
each epoch's history row, the test metrics; a resumed job's run holds each epoch once; a clear
error naming the extra when MLflow is missing."""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from gfmtune.train import cell_state, job, mlflow_run
from gfmtune.train.job import Cell, CellJob
from tests.train.conftest import FAST, inputs

CELL = Cell("utae_tiny", None, "100", 6)


@pytest.fixture(autouse=True)
def file_store_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sink sets it for file stores; the test's own client reads the same store."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def _runs(store: Path, experiment: str) -> list:
    client = MlflowClient(tracking_uri=store.absolute().as_uri())
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {store}"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def _steps(store: Path, run_id: str, key: str) -> list[tuple[int, float]]:
    history = MlflowClient(tracking_uri=store.absolute().as_uri()).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def test_a_cell_is_one_run_holding_settings_history_and_test_metrics(
    train_data: Path, tmp_path: Path
) -> None:
    store, out = tmp_path / "mlruns", tmp_path / "myrun" / "cells" / "utae_tiny-100-t6"
    settings = replace(FAST, epochs=2, mlflow=str(store))
    metrics = CellJob(CELL, inputs(train_data), settings, out, progress=False).run()
    (run,) = _runs(store, "myrun")
    assert run.info.status == "FINISHED" and run.info.run_name == out.name
    assert run.data.tags["gfmtune.model"] == "utae_tiny"
    assert run.data.tags["gfmtune.timesteps"] == "6"
    assert run.data.params["lr"] == str(settings.lr)
    assert run.data.params["epochs"] == "2" and run.data.params["mlflow"] == str(store)
    history = pd.read_csv(out / "history.csv")
    for column in ("train_loss", "val_miou_paper", "lr_decoder", "seconds"):
        assert _steps(store, run.info.run_id, column) == list(
            zip([1, 2], history[column].astype(float), strict=True)
        )
    saved = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["test_miou_paper"] == saved["test"]["miou_paper"]
    assert run.data.metrics["test_miou"] == metrics["test"]["miou"]
    assert run.data.metrics["best_epoch"] == saved["best_epoch"]
    assert (out / mlflow_run.RUN_FILE).read_text().strip() == run.info.run_id


def test_a_resumed_job_logs_each_epoch_once_in_a_new_run(
    train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGINT in epoch 2 (epoch 1 saved): that run ends KILLED; the rerun's run first logs the
    saved epoch 1, then epochs 2 and 3, and ends FINISHED."""
    store, out = tmp_path / "mlruns", tmp_path / "cell"
    settings = replace(FAST, mlflow=str(store))
    train_epoch, calls = job.train_epoch, []

    def interrupted(*args, **kwargs) -> float:
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(job, "train_epoch", interrupted)
    with pytest.raises(cell_state.JobStopped):
        CellJob(CELL, inputs(train_data), settings, out, progress=False).run()
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    CellJob(CELL, inputs(train_data), settings, out, progress=False).run()
    stopped, resumed = _runs(store, mlflow_run.DEFAULT_EXPERIMENT)
    assert (stopped.info.status, resumed.info.status) == ("KILLED", "FINISHED")
    assert [s for s, _ in _steps(store, stopped.info.run_id, "train_loss")] == [1]
    history = pd.read_csv(out / "history.csv")
    assert _steps(store, resumed.info.run_id, "train_loss") == list(
        zip([1, 2, 3], history["train_loss"], strict=True)
    )


def test_a_run_left_running_by_a_killed_job_is_ended_as_killed(
    train_data: Path, tmp_path: Path
) -> None:
    store, out = tmp_path / "mlruns", tmp_path / "cell"
    client = mlflow_run.mlflow_client(str(store))
    experiment = client.create_experiment(mlflow_run.DEFAULT_EXPERIMENT)
    orphan = client.create_run(experiment, run_name="cell").info.run_id  # a SIGKILLed attempt
    out.mkdir()
    (out / mlflow_run.RUN_FILE).write_text(orphan + "\n")
    settings = replace(FAST, epochs=1, mlflow=str(store))
    CellJob(CELL, inputs(train_data), settings, out, progress=False).run()
    assert client.get_run(orphan).info.status == "KILLED"
    assert [r.info.status for r in _runs(store, mlflow_run.DEFAULT_EXPERIMENT)] == [
        "KILLED",
        "FINISHED",
    ]


def test_missing_package_stops_at_job_start_naming_the_extra(
    train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # import fails
    settings = replace(FAST, mlflow=str(tmp_path / "mlruns"))
    with pytest.raises(ValueError, match=r"pip install 'gfmtune\[mlflow\]'"):
        CellJob(CELL, inputs(train_data), settings, tmp_path / "cell", progress=False)
    assert not (tmp_path / "cell").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("http://tracking:5000", "http://tracking:5000"),
        ("file:///data/mlruns", "file:///data/mlruns"),
    ],
)
def test_a_uri_is_kept(value: str, expected: str) -> None:
    assert mlflow_run.tracking_uri(value) == expected


def test_a_folder_becomes_an_absolute_file_store(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert mlflow_run.tracking_uri("results/mlruns") == (tmp_path / "results/mlruns").as_uri()


def test_the_experiment_is_the_folder_above_cells(tmp_path: Path) -> None:
    assert mlflow_run.experiment_name(tmp_path / "demo" / "cells" / "split~a" / "c") == "demo"
    assert mlflow_run.experiment_name(tmp_path / "elsewhere") == mlflow_run.DEFAULT_EXPERIMENT
