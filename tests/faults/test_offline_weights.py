"""``weights.offline``: ``snakemake -n`` stops with one error listing every checkpoint the run
needs that is missing from ``weights.dir`` or of the wrong size, and passes when all are there
(sparse files of the published sizes: only the size is checked at parse time)."""

from __future__ import annotations

from pathlib import Path

from gfmtune.models.catalog import CROMA_LARGE, DINO_TORCHGEO
from tests.workflow_helpers import job_counts, run_snakemake


def dry_run(workdir: Path, folder: Path, offline: bool = True) -> tuple[int, str]:
    """Exit status and output of ``snakemake -n`` on the paper preset with ``folder``."""
    config = {"weights": {"dir": str(folder), "offline": offline}}
    result = run_snakemake(workdir, "-n", "--cores", "1", config=config)
    return result.returncode, result.stdout + result.stderr


def sparse(path: Path, size: int) -> None:
    with path.open("wb") as f:
        f.truncate(size)


def test_empty_weights_dir_lists_both_checkpoints_and_the_prefetch(tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    code, output = dry_run(tmp_path, folder)
    assert code != 0
    assert output.count("weights.offline is true") == 1, output
    for ckpt in (CROMA_LARGE, DINO_TORCHGEO):
        assert f"{folder / ckpt.filename}: expected {ckpt.size:,} bytes, found none" in output
    assert "gfmtune weights --checkpoint NAME --dir DIR" in output
    assert "croma_large, ssl4eo_dino_vits16_torchgeo" in output
    assert not (tmp_path / "results").exists()


def test_wrong_size_is_named_with_the_size_found(tmp_path: Path) -> None:
    sparse(tmp_path / CROMA_LARGE.filename, CROMA_LARGE.size - 1)
    sparse(tmp_path / DINO_TORCHGEO.filename, DINO_TORCHGEO.size)
    code, output = dry_run(tmp_path, tmp_path)
    assert code != 0
    expected = f"expected {CROMA_LARGE.size:,} bytes, found {CROMA_LARGE.size - 1:,} bytes"
    assert f"{tmp_path / CROMA_LARGE.filename}: {expected}" in output, output
    assert DINO_TORCHGEO.filename not in output


def test_checkpoints_of_the_published_sizes_pass(tmp_path: Path) -> None:
    for ckpt in (CROMA_LARGE, DINO_TORCHGEO):
        sparse(tmp_path / ckpt.filename, ckpt.size)
    code, output = dry_run(tmp_path, tmp_path)
    assert code == 0, output
    assert job_counts(output)["weights"] == 2  # the rule still runs: it checks the sha256


def test_online_runs_are_not_checked(tmp_path: Path) -> None:
    code, output = dry_run(tmp_path, tmp_path / "absent", offline=False)
    assert code == 0, output
    assert job_counts(output)["weights"] == 2
