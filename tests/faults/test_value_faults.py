"""Fault matrix, allowed values (issue 19 section 7): a value the schema allows either works or
stops ``snakemake -n`` with one line; data values that cannot be right stop with a message
naming the file and the value; a batch larger than the training split is said, not hidden.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from gfmtune import pastis
from gfmtune.cli import main
from gfmtune.data.dataset import ManifestError, store_normaliser
from gfmtune.train.job import Cell
from tests.data.fake_servers import write_small_dataset
from tests.train.conftest import FAST, inputs, train_argv
from tests.train.conftest import train_data as train_data  # the fixture, for this module
from tests.workflow_helpers import job_counts, run_snakemake

SMALL_PLAN = {"manifests": {"label_percents": [10], "timesteps": [6]}}


def dry_run(tmp_path: Path, *args: str, config: dict | None = None) -> tuple[int, str, str]:
    result = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", *args,
                           config=config or SMALL_PLAN)  # fmt: skip
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize(
    "overlay, planned",
    [
        pytest.param({"train": {"ft_rates": [0.00001]}}, "/ft_rate~1e-05/", id="ft-rate-1e-05"),
        pytest.param({"manifests": {"label_percents": [0.00001], "timesteps": [6]}},
                     "/label_percent~1e-05/", id="label-percent-1e-05"),
        pytest.param({"manifests": {"label_percents": [0.5, 10], "timesteps": [6]}},
                     "/label_percent~0.5/", id="label-percent-0.5"),
        pytest.param({"train": {"seeds": [4294967295]}}, "/seed~4294967295/", id="seed-max"),
    ],
)  # fmt: skip
def test_small_and_large_numbers_plan_their_cells(
    tmp_path: Path, overlay: dict, planned: str
) -> None:
    code, out, err = dry_run(tmp_path, config=SMALL_PLAN | overlay)
    assert code == 0, err[-2000:]
    assert planned in out


def test_workers_0_on_the_command_line_works_as_in_a_file(tmp_path: Path) -> None:
    code, out, err = dry_run(tmp_path, "--config", "train={settings: {workers: 0}}")
    assert code == 0, err[-2000:]
    assert '"workers": 0' in out


def test_keep_checkpoint_none_plans_no_maps_and_says_so(tmp_path: Path) -> None:
    overlay = SMALL_PLAN | {"train": {"settings": {"keep_checkpoint": "none"}}}
    code, out, err = dry_run(tmp_path, config=overlay)
    assert code == 0, err[-2000:]
    assert "predict_maps" not in job_counts(out) and job_counts(out)["train"] > 0
    assert "keep_checkpoint is none: no cell keeps best.pt" in err
    code, out, err = dry_run(tmp_path, "results/paper/maps", config=overlay)
    assert code != 0
    assert "train.settings.keep_checkpoint is none; set it to best" in out + err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "norm, std, named",
    [
        pytest.param("train_folds", [0.0] + [1.0] * 9, "B2 (std 0.0)", id="constant-B2"),
        pytest.param("train_folds", [1.0] * 9 + [float("nan")], "B12 (std nan)", id="nan-B12"),
        pytest.param("paper", [1.0] * 4 + [-1.0] + [1.0] * 5, "B6 (std -1.0)", id="paper-B6"),
    ],
)  # fmt: skip
def test_a_band_without_spread_names_store_band_and_remedy(
    norm: str, std: list[float], named: str
) -> None:
    attrs = {f"norm_{norm}": {"mean": [0.0] * 10, "std": std}}
    with pytest.raises(ManifestError) as err:
        store_normaliser(attrs, norm, store="/data/s2.zarr")
    message = str(err.value)
    assert message.startswith("/data/s2.zarr: norm_" + norm) and named in message
    remedy = "norm: paper" if norm == "train_folds" else "rebuild the store"
    assert remedy in message


def _set_first_id(root: Path, value: object) -> None:
    path = root / pastis.METADATA_FILE
    collection = json.loads(path.read_text())
    collection["features"][0]["properties"]["ID_PATCH"] = value
    path.write_text(json.dumps(collection))


@pytest.mark.parametrize("value", [30000.5, True, "30000.5", "x", None, [1]])
def test_a_patch_id_that_is_no_whole_number_is_refused(tmp_path: Path, value: object) -> None:
    root = write_small_dataset(tmp_path / "PASTIS")
    _set_first_id(root, value)
    with pytest.raises(pastis.PastisFormatError) as err:
        pastis.read_metadata(root)
    message = str(err.value)
    assert str(root / pastis.METADATA_FILE) in message and "feature 0" in message
    assert "ID_PATCH" in message


@pytest.mark.parametrize("value", [99991, 99991.0, "99991"])
def test_a_whole_patch_id_is_read_exactly(tmp_path: Path, value: object) -> None:
    root = write_small_dataset(tmp_path / "PASTIS")
    _set_first_id(root, value)
    assert pastis.read_metadata(root).frame.patch_id.iloc[0] == 99991


@pytest.mark.parametrize("drop_last", [False, True])
def test_a_split_smaller_than_one_batch_is_said(
    train_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, drop_last: bool
) -> None:
    """The 10 % split of the training data holds fewer patches than a batch of 64: without
    drop_last the cell trains and warns; with it, the cell stops naming the split."""
    data = inputs(train_data, "10", 1)
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(replace(FAST, epochs=1, batch_size=64,
                                           drop_last=drop_last).to_dict()))  # fmt: skip
    out = tmp_path / "cell"
    with caplog.at_level(logging.WARNING):
        code = main(train_argv(data, Cell("utae_tiny", None, "10", 1), settings, out))
    said = [r.getMessage() for r in caplog.records if str(data.label_split) in r.getMessage()]
    assert len(said) == 1, caplog.text
    if drop_last:
        assert code == 1 and "make no batch of 64 with drop_last" in said[0]
        assert not (out / "metrics.json").exists()
    else:
        assert code == 0 and "fewer than one batch of 64" in said[0]
        assert (out / "metrics.json").exists()


@pytest.mark.parametrize(
    "manifests, named",
    [
        pytest.param({"timesteps": [6, 40]}, "manifests.timesteps[1]: 40 exceeds the 35 frames",
                     id="paper-40"),
        pytest.param({"timesteps": [36], "label_percents": [10]},
                     "manifests.timesteps[0]: 36 exceeds", id="paper-36"),
    ],
)  # fmt: skip
def test_paper_timesteps_above_35_stop_the_dry_run(
    tmp_path: Path, manifests: dict, named: str
) -> None:
    """Known from the configuration alone: refused before the download, not after it."""
    code, out, err = dry_run(tmp_path, config={"manifests": manifests})
    assert code != 0 and named in out + err and "'uniform' or 'random'" in out + err
    assert len((out + err).strip().splitlines()) < 10, out + err
    assert not (tmp_path / "results").exists()


def test_uniform_timesteps_above_35_plan(tmp_path: Path) -> None:
    overlay = {"manifests": {"timesteps": [40], "timestep_strategy": "uniform",
                             "label_percents": [10]}}  # fmt: skip
    code, out, err = dry_run(tmp_path, config=overlay)
    assert code == 0, err[-2000:]
    assert "/timesteps~40/" in out


def test_a_failed_job_shows_its_cause_on_the_terminal(tmp_path: Path) -> None:
    """The workflow profile (profiles/default) prints a failed job's log: the one line that
    says why is on the terminal, not only in the file."""
    config = {"run": "fail", "models": ["utae_tiny"],
              "data": {"source": "synthetic",
                       "synthetic": {"patches": 10, "size": 16, "frames_per_tile": [5, 7]}},
              "manifests": {"label_percents": [100], "timesteps": [6]}}  # fmt: skip
    result = run_snakemake(tmp_path, "--cores", "1", "--until", "timestep_manifest",
                           config=config)  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Logfile results/fail/logs/timesteps_6.log:" in output
    assert "ERROR gfmtune: timesteps t=6 with strategy 'paper' exceeds the 5 frames" in output
