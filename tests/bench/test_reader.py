"""``gfmtune bench-data`` measures every (t, cache) cell and reports it (no speed assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gfmtune.bench import reader
from gfmtune.cli import main

TINY = ["--patches", "6", "--size", "16", "--frames", "35", "37", "--repeats", "1"]


def _measured_ok(row: dict) -> bool:
    return (
        row["status"] == "measured"
        and row["zarr_samples_per_s"] > 0
        and row["raw_samples_per_s"] > 0
        and row["ratio"] > 0
        and len(row["zarr_all"]) == len(row["raw_all"]) == 1
    )


def test_bench_reports_all_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench-data", "--work", str(tmp_path / "work"), *TINY, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    cells = [(row["t"], row["cache"]) for row in result["rows"]]
    assert cells == [(t, c) for t in (1, 6, 35) for c in ("warm", "cold")]
    for row in result["rows"]:
        assert f"| {row['t']} | {row['cache']} |" in table
        if row["cache"] == "warm" or not row["status"].startswith("not measured"):
            assert _measured_ok(row), row
        assert row["target"] == reader.TARGETS.get((row["cache"], row["t"]))
    assert 0 < result["bytes"]["ratio"] < 1 and "Store / raw bytes" in table
    assert result["machine"]["cpus"] >= 1 and result["config"]["patches"] == 6

    store = tmp_path / "work" / "s2.zarr" / "zarr.json"
    stamp = store.stat().st_mtime_ns
    assert main(["bench-data", "--work", str(tmp_path / "work"), *TINY, "--cache", "warm"]) == 0
    assert store.stat().st_mtime_ns == stamp, "same settings must reuse the data and store"
    assert "| 6 | warm |" in capsys.readouterr().out


def test_cold_cache_not_measurable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(reader, "DROP_CACHES", tmp_path / "no" / "drop_caches")
    out = tmp_path / "bench.json"
    args = [*TINY, "--timesteps", "6", "--json", str(out)]
    assert main(["bench-data", "--work", str(tmp_path / "work"), *args]) == 0
    warm, cold = json.loads(out.read_text())["rows"]
    assert _measured_ok(warm) and "met" in warm
    assert cold["status"].startswith("not measured (FileNotFoundError")
    assert "| 6 | cold | not measured (" in capsys.readouterr().out
