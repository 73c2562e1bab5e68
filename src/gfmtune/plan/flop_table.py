"""The FLOP table shipped as ``gfmtune/resources/flops.json``: the counts of
:mod:`gfmtune.plan.flops` for every job key of the shipped presets (``workflow_config.yaml``
alone and with each overlay of :data:`PRESETS`), so that ``gfmtune plan`` answers in seconds;
a key the table lacks is counted when needed (seconds each). After a change to a model or to
the training step, regenerate it from the workflow's folder (a few minutes on 2 CPU cores)::

    python -m gfmtune.plan.flop_table

``tests/test_plan.py`` checks a row against a fresh count.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import torch

from gfmtune.fileio import atomic_write_text
from gfmtune.plan.cost import jobs
from gfmtune.plan.data import data_facts
from gfmtune.plan.flops import FlopKey, FlopRow, count
from gfmtune.plan.load import PRESET, load_config

log = logging.getLogger(__name__)

TABLE = "flops.json"
#: Overlays of the shipped presets (none: the paper preset alone).
PRESETS: tuple[tuple[str, ...], ...] = (
    (),
    ("config/authors.yaml",),
    ("config/ft_sweep.yaml",),
    ("config/demo.yaml",),
)
_KEY_FIELDS = [f.name for f in dataclasses.fields(FlopKey)]


def to_json(rows: Iterable[FlopRow]) -> str:
    """The table's text: one flat object a line, sorted by key."""
    flat = [
        {**dataclasses.asdict(row.key), **{k: v for k, v in vars(row).items() if k != "key"}}
        for row in sorted(rows, key=lambda r: r.key)
    ]
    about = "FLOPs per sample (training) or patch; python -m gfmtune.plan.flop_table writes it"
    head = json.dumps({"about": about, "torch": torch.__version__})[:-1]
    return head + ', "rows": [\n' + ",\n".join(json.dumps(r) for r in flat) + "\n]}\n"


def from_json(text: str) -> dict[FlopKey, FlopRow]:
    rows = {}
    for flat in json.loads(text)["rows"]:
        key = FlopKey(**{k: flat.pop(k) for k in _KEY_FIELDS})
        rows[key] = FlopRow(key, **flat)
    return rows


def shipped() -> dict[FlopKey, FlopRow]:
    """The table in the package (empty when absent)."""
    table = resources.files("gfmtune.resources").joinpath(TABLE)
    return from_json(table.read_text()) if table.is_file() else {}


def flop_rows(keys: Iterable[FlopKey], recount: bool = False) -> dict[FlopKey, FlopRow]:
    """The row of every key: the shipped table's, else (or with ``recount``) counted now."""
    table = {} if recount else shipped()
    missing = sorted(set(keys) - set(table))
    if missing:
        log.info("counting FLOPs of %d (model, regime, t) rows on the meta device", len(missing))
    return {key: table[key] if key in table else count(key) for key in set(keys)}


def preset_keys(root: Path) -> set[FlopKey]:
    """The job keys of the shipped presets, read from the workflow folder ``root``."""
    keys = set()
    for overlays in PRESETS:
        config = load_config(root / PRESET, [root / o for o in overlays])
        keys |= {job.key for job in jobs(config, data_facts(config))}
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(str(resources.files("gfmtune.resources").joinpath(TABLE)))
    parser.add_argument("--root", type=Path, default=Path(), help="the workflow's folder")
    parser.add_argument("--out", type=Path, default=here, help=f"the table (default {here})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    keys = sorted(preset_keys(args.root))
    rows = []
    for i, key in enumerate(keys, 1):
        log.info("%d/%d %s", i, len(keys), key)
        rows.append(count(key))
    atomic_write_text(args.out, to_json(rows))
    log.info("wrote %s (%d rows)", args.out, len(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
