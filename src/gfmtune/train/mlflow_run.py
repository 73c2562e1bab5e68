"""Optional MLflow run of a training cell (setting ``mlflow``: a tracking URI or a folder).

One MLflow run per cell, named after the cell, tagged with its keys (model, FT-Rate, label
percent, timesteps, seed) and its folder, holding every ``train.settings`` value as a param,
each epoch's history row as metrics at step = epoch (the columns of ``history.csv``), and the
test metrics (``test_miou``, ``test_miou_paper``, ``test_oa``, ``best_epoch``, ...) at the end.

``mlflow`` is a folder (a file store: no server, so it works offline on compute nodes; relative
to the working folder) or any URI MLflow takes (``file:``, ``sqlite:``, ``http(s):``). The
experiment is the run's folder name (``results/<run>``), else ``gfmtune``. MLflow 3 keeps file
stores in maintenance mode and refuses them unless ``MLFLOW_ALLOW_FILE_STORE`` is set, which
this module sets for a file store (``mlflow migrate-filestore`` moves one into a database).

A resumed job ends the earlier attempt's run as KILLED (its id is in ``<cell>/mlflow_run``) and
starts a new one that first logs the history rows it resumes from, so the cell's last run
always holds each epoch once. Needs the optional extra (``pip install 'gfmtune[mlflow]'``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

RUN_FILE = "mlflow_run"  # in the cell folder: the MLflow run id of the latest attempt
INSTALL = "pip install 'gfmtune[mlflow]'"
DEFAULT_EXPERIMENT = "gfmtune"


def client_class() -> type:
    """MLflow's ``MlflowClient``; a :class:`ValueError` naming the extra when MLflow is not
    installed (a setting this environment cannot honour: a retry would repeat it)."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        raise ValueError(
            f"train.settings.mlflow is set but MLflow cannot be imported ({err}): {INSTALL}, "
            "or set mlflow: ''"
        ) from err
    return MlflowClient


def mlflow_client(value: str):
    """An ``MlflowClient`` for the setting's ``value`` (a folder becomes a file store)."""
    uri = tracking_uri(value)
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return client_class()(tracking_uri=uri)


def tracking_uri(value: str) -> str:
    """``value`` as a URI: one with a scheme is kept, a folder becomes ``file:`` + its
    absolute path."""
    if len(urlparse(value).scheme) > 1:  # one letter: a Windows drive
        return value
    return Path(value).absolute().as_uri()


def experiment_name(cell_dir: Path) -> str:
    """The run's folder name (the folder holding ``cells/``), else :data:`DEFAULT_EXPERIMENT`."""
    for folder in Path(cell_dir).absolute().parents:
        if folder.name == "cells":
            return folder.parent.name
    return DEFAULT_EXPERIMENT


class CellRun:
    """The cell's MLflow run: :meth:`epoch` logs a history row, :meth:`final` the metrics."""

    def __init__(self, client, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def epoch(self, row: dict) -> None:
        self._log({k: v for k, v in row.items() if k != "epoch"}, int(row["epoch"]))

    def final(self, metrics: dict) -> None:
        """Test metrics as ``test_<name>`` (per-class values left to ``metrics.json``), the
        best epoch, the wall seconds and the attempts; not-a-number values are skipped."""
        values = {f"test_{k}": v for k, v in metrics["test"].items() if k != "per_class"}
        values |= {k: metrics[k] for k in ("best_epoch", "wall_seconds", "attempts")}
        self._log({k: v for k, v in values.items() if _finite(v)}, 0)

    def _log(self, values: dict, step: int) -> None:
        """``values`` as metrics at ``step``, in one batch."""
        from mlflow.entities import Metric

        now = _now_ms()
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)


@contextmanager
def cell_run(
    uri: str | None, cell_dir: Path, name: str, tags: dict, settings: dict, history: list[dict]
) -> Iterator[CellRun | None]:
    """The cell's run for the block (None when ``uri`` is empty): FINISHED after the block,
    FAILED or KILLED (a stopped job) when it raises. ``history``: the rows a resumed job
    starts from, logged first."""
    if not uri:
        yield None
        return
    client = mlflow_client(uri)
    run_file = Path(cell_dir) / RUN_FILE
    _end_earlier_attempt(client, run_file)
    run = client.create_run(
        _experiment_id(client, experiment_name(cell_dir)),
        run_name=name,
        tags={f"gfmtune.{k}": str(v) for k, v in tags.items()}
        | {"gfmtune.cell_dir": str(Path(cell_dir).absolute())},
    )
    run_id = run.info.run_id
    run_file.parent.mkdir(parents=True, exist_ok=True)
    run_file.write_text(run_id + "\n")
    tracked = CellRun(client, run_id)
    try:
        _log_params(client, run_id, settings)
        for row in history:
            tracked.epoch(row)
        yield tracked
    except BaseException as err:
        client.set_terminated(run_id, _ended_status(err))
        raise
    client.set_terminated(run_id, "FINISHED")


def _experiment_id(client, name: str) -> str:
    """The experiment's id, created when missing (another cell may create it meanwhile)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created by a concurrent job between the two calls
        return client.get_experiment_by_name(name).experiment_id


def _end_earlier_attempt(client, run_file: Path) -> None:
    """Mark the run of an earlier attempt KILLED when it is still RUNNING (a killed job)."""
    from mlflow.exceptions import MlflowException

    if not run_file.is_file():
        return
    try:
        earlier = client.get_run(run_file.read_text().strip())
    except MlflowException:  # another store, or deleted: nothing to end
        return
    if earlier.info.status == "RUNNING":
        client.set_terminated(earlier.info.run_id, "KILLED")


def _log_params(client, run_id: str, settings: dict) -> None:
    from mlflow.entities import Param

    params = [Param(k, str(list(v) if isinstance(v, tuple) else v)) for k, v in settings.items()]
    client.log_batch(run_id, params=params)


def _ended_status(err: BaseException) -> str:
    from gfmtune.train.cell_state import JobStopped

    return "KILLED" if isinstance(err, JobStopped | KeyboardInterrupt) else "FAILED"


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _now_ms() -> int:
    return int(time.time() * 1000)
