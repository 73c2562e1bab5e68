"""A training cell's optional experiment trackers, one switch each in ``train.settings``:
``tensorboard`` (event files in the cell folder, :mod:`gfmtune.train.board`) and ``mlflow``
(a run in an MLflow store, :mod:`gfmtune.train.mlflow_run`). Neither changes a result."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path

from gfmtune.train import board, mlflow_run
from gfmtune.train.settings import TrainSettings

#: Settings that change no result: a resumable state need not match them.
NO_RESULT = ("checkpoint_minutes", "tensorboard", "mlflow")


def check_installed(settings: TrainSettings) -> None:
    """A :class:`ValueError` naming the extra when a tracker switched on cannot be imported,
    before a job does any work."""
    if settings.tensorboard:
        board.summary_writer()
    if settings.mlflow:
        mlflow_run.client_class()


class Trackers:
    """What the job calls: :meth:`epoch` with each history row, :meth:`final` with the cell's
    metrics (returned unchanged)."""

    def __init__(self, board_row, run: mlflow_run.CellRun | None) -> None:
        self.board_row, self.run = board_row, run

    def epoch(self, row: dict) -> None:
        self.board_row(row)
        if self.run is not None:
            self.run.epoch(row)

    def final(self, metrics: dict) -> dict:
        if self.run is not None:
            self.run.final(metrics)
        return metrics


@contextmanager
def cell_trackers(settings: TrainSettings, cell, out: Path, state: dict) -> Iterator[Trackers]:
    """The trackers of the cell (a dataclass) in ``out``, resumed at ``state``'s epoch."""
    with ExitStack() as stack:
        board_dir = out / board.FOLDER if settings.tensorboard else None
        board_row = stack.enter_context(board.epoch_board(board_dir, state["epoch"]))
        run = stack.enter_context(
            mlflow_run.cell_run(
                settings.mlflow, out, out.name, asdict(cell), settings.to_dict(), state["history"]
            )
        )
        yield Trackers(board_row, run)
