"""gfmtune bench-numerics on one demo cell for one epoch: the table it prints holds."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from gfmtune.bench import numerics as bench
from gfmtune.cli import main


def test_bench_numerics_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    one_epoch = replace(bench.demo_settings(), epochs=1)
    monkeypatch.setattr(bench, "demo_settings", lambda: one_epoch)
    monkeypatch.setattr(bench, "CELLS", (("utae_tiny", "none"),))
    assert main(["bench-numerics", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench_numerics.json").read_text())["rows"]
    miou = {(r["mode"], r["other_kernels"]): r["test_miou_paper"] for r in rows}
    assert miou["portable", True] == miou["portable", False]
    assert all(r["seconds"] > 0 for r in rows) and len(rows) == 4
    table = (tmp_path / "bench_numerics.md").read_text()
    assert table in capsys.readouterr().out
    assert f"| utae_tiny none 100 % t=6 | {miou['native', False]:.4f} |" in table
