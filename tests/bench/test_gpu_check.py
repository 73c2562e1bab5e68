"""``gfmtune gpu-check``: every part runs (``--dry``, on the CPU), rows are written as they
come, a failing row does not end the check, the projection's arithmetic, and the wheels a bare
GPU machine needs cover every distribution the check imports."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from gfmtune.bench import gpu_check, wheels
from gfmtune.bench.gpu_check import JSON, MD, Report
from tests.workflow_helpers import REPO

#: Runs the dry check, then prints the distributions its process had imported (JSON).
IMPORTS = """
import json, sys
from importlib import metadata
from gfmtune.cli import main
code = main(["gpu-check", "--dry", "--out", sys.argv[1], "--budget-s", "3600"])
owners = metadata.packages_distributions()
tops = {name.split(".")[0] for name in sys.modules}
print(json.dumps({"code": code, "dists": sorted({d for t in tops for d in owners.get(t, [])})}))
"""


#: Imported here only because they are installed (for selenium): httpcore2 tries trio.
OPTIONAL = {"trio", "outcome", "sniffio"}


def requirement_closure(names: frozenset[str]) -> set[str]:
    """``names`` and every distribution they require, recursively (not their extras), as the
    packages installed here declare them."""
    seen, todo = set(), [wheels.canonical(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        needed = [Requirement(r) for r in requires]
        todo += [wheels.canonical(r.name) for r in needed
                 if r.marker is None or r.marker.evaluate({"extra": ""})]  # fmt: skip
    return seen


@pytest.fixture(scope="module")
def dry(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, list[str], int]:
    out = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run([sys.executable, "-c", IMPORTS, str(out)], capture_output=True,
                          text=True, timeout=1500, cwd=REPO)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    data = json.loads((out / JSON).read_text())
    return data, (out / MD).read_text(), result["dists"], result["code"]


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_dry_check_runs_every_part(dry: tuple[dict, str, list[str], int]) -> None:
    data, text, _, code = dry
    assert code == 0
    parts = data["parts"]
    assert list(parts) == ["peak", "bench", "store", "loader", "cells", "compile", "numerics",
                           "eval_cache", "projection"]  # fmt: skip
    assert [r["eval_cache"] for r in parts["eval_cache"]] == [False, True]
    assert data["header"]["dry"] and "Dry run" in text
    bench = parts["bench"]
    assert {(r["model"], r["regime"], r["path"]) for r in bench} == {
        (m, g, p) for m, gs in (("croma_tiny", ("frozen", "finetune")),
                                ("dino_tiny", ("frozen", "finetune")), ("utae_tiny", ("scratch",)))
        for g in gs for p in ("default", "reference")
    }  # fmt: skip
    assert all(r["status"] == "measured" and r["train_mfu"] > 0 for r in bench)
    cells = {r["model"]: r for r in parts["cells"]}
    assert set(cells) == {"utae_tiny", "dino_tiny", "croma_tiny"}
    for row in cells.values():  # stopped by SIGTERM, resumed, equal on the CPU
        assert row["status"] == "ok" and row["exit_codes"] == [0, 1, 0], row
        assert row["resume"] == "equal" and row["max_difference"] == 0
    assert cells["dino_tiny"]["feature_cache"] and not cells["utae_tiny"]["feature_cache"]
    assert [r["path"] for r in parts["compile"]] == ["default", "default+compile"]
    assert len(parts["numerics"]) == 4 and all(r["status"] == "measured"
                                               for r in parts["numerics"])  # fmt: skip
    [projection] = parts["projection"]
    assert projection["status"] == "projected" and projection["runs"] == 140
    assert projection["total_hours"] > projection["steps_hours"] > 0
    for heading in ("## peak", "## bench", "## cells", "## projection"):
        assert heading in text


@pytest.mark.slow
@pytest.mark.timeout(1600)
def test_the_check_imports_only_the_image_and_the_wheels(
    dry: tuple[dict, str, list[str], int],
) -> None:
    """What the GPU machine lacks must be among the wheels ``gfmtune gpu-wheels`` fetches.
    What the image's packages import of their own (their requirements, as installed here)
    comes with them there."""
    *_, dists, _ = dry
    allowed = requirement_closure(wheels.GPU_IMAGE) | {wheels.canonical(n) for n in wheels.WHEELS}
    assert {wheels.canonical(d) for d in dists} - allowed - OPTIONAL - {"gfmtune"} == set()
    assert "zarr" in dists and "jsonschema" in dists  # the check did reach the data path


def test_rows_are_written_as_they_come_and_a_failure_is_one_row(tmp_path: Path) -> None:
    report = Report(tmp_path, {"date": "d", "dry": True, "machine": {}}, budget_s=60)
    report.attempt("bench", lambda: {"status": "measured", "step_s": 0.5})
    assert json.loads((tmp_path / JSON).read_text())["parts"]["bench"][0]["step_s"] == 0.5

    def broken() -> dict:
        raise RuntimeError("CUDA error: an illegal memory access")

    row = report.attempt("bench", broken)
    assert row["status"] == "error: RuntimeError: CUDA error: an illegal memory access"
    assert len(json.loads((tmp_path / JSON).read_text())["parts"]["bench"]) == 2
    assert "| error: RuntimeError" in (tmp_path / MD).read_text()
    report.budget_s = 0
    assert not report.time_left()


def test_a_step_is_no_faster_than_the_loader_delivers() -> None:
    rates = {6: 80.0, 35: 20.0}  # samples/s of one worker
    row = {"status": "measured", "model": "utae", "regime": "scratch", "t": 35, "step_s": 0.01,
           "feature_cache": False}  # fmt: skip
    bounded = gpu_check._loader_bound(row, rates, batch=8)
    floor = 8 / 20.0 / gpu_check.MAX_AUTO_WORKERS
    assert bounded["step_s"] == pytest.approx(floor) and bounded["loader_bound"]
    fast_enough = gpu_check._loader_bound(row | {"step_s": 1.0}, rates, batch=8)
    assert fast_enough["step_s"] == 1.0 and not fast_enough["loader_bound"]
    cached = row | {"feature_cache": True}
    assert gpu_check._loader_bound(cached, rates, batch=8) == cached


def test_checkpoint_writes_scale_with_the_run_time() -> None:
    cell = {"seconds": 2 * 1500.0, "runs": 2, "regime": "finetune"}  # 25 minutes a run
    seconds = gpu_check._write_seconds(cell, {"finetune": 1_000_000}, rate=1e6)
    assert seconds == 2 * 3 * 1.0  # two runs, saves at 10 and 20 minutes and the last


def test_wheel_folder_needs_one_version_of_each(tmp_path: Path) -> None:
    for name in wheels.WHEELS:
        (tmp_path / f"{name.replace('-', '_')}-1.0-py3-none-any.whl").write_bytes(b"")
    wheels.check_dest(tmp_path)
    (tmp_path / "zarr-2.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "rpds_py-1.0-py3-none-any.whl").unlink()
    with pytest.raises(ValueError, match=r"missing wheels \['rpds-py'\].*'zarr'"):
        wheels.check_dest(tmp_path)


def test_wheels_are_fetched_for_the_gpu_machine(tmp_path: Path) -> None:
    command = wheels.download_command("zarr", "3.1.6", tmp_path)
    assert command[-1] == "zarr==3.1.6" and "--no-deps" in command
    assert command[command.index("--python-version") + 1] == "3.12"
    assert "--only-binary=:all:" in command and "manylinux2014_x86_64" in command
