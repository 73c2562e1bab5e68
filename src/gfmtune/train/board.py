"""Optional TensorBoard event files of a training cell (setting ``tensorboard``).

Each epoch's history row (the values the job log prints: loss, validation metrics, learning
rates, seconds) is written as scalars named after the columns of ``history.csv``, at step =
epoch, into ``<cell>/tensorboard/``. Needs the optional extra (``pip install
'gfmtune[tensorboard]'``), since ``torch.utils.tensorboard`` imports the tensorboard package.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

FOLDER = "tensorboard"  # in the cell folder
INSTALL = "pip install 'gfmtune[tensorboard]'"


def summary_writer() -> type:
    """torch's ``SummaryWriter``; a :class:`ValueError` naming the extra when tensorboard is
    not installed (a setting this environment cannot honour: a retry would repeat it)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ValueError(
            f"train.settings.tensorboard is true but TensorBoard cannot be imported ({err}): "
            f"{INSTALL}, or set tensorboard: false"
        ) from err
    return SummaryWriter


@contextmanager
def epoch_board(folder: Path | None, done_epochs: int) -> Iterator[Callable[[dict], None]]:
    """A function writing one history row to event files in ``folder`` (None: a function that
    does nothing). A resumed job (``done_epochs`` > 0) purges the events of later epochs that an
    attempt stopped without saving its state had written."""
    if folder is None:
        yield lambda row: None
        return
    writer = summary_writer()(str(folder), purge_step=done_epochs + 1 if done_epochs else None)
    try:
        yield lambda row: _write_row(writer, row)
    finally:
        writer.close()


def _write_row(writer, row: dict) -> None:
    """The row's values but its epoch, as scalars at step = epoch, flushed at once."""
    for key, value in row.items():
        if key != "epoch":
            writer.add_scalar(key, value, row["epoch"])
    writer.flush()
