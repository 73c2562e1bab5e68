"""Fault matrix, configuration and checkpoint side (issue 9): config typos and out-of-range
values, and wrong, garbage, pickled or misfitting checkpoint files.

A bad configuration ends ``snakemake -n`` (and ``gfmtune train``) before any work, with a short
message naming the key, its value and what is allowed, and writes nothing. A bad checkpoint ends
with a message naming the file; a wrong file in ``weights.dir`` is moved aside, never deleted, and
a pickled payload never runs. Most config cases run the workflow's validation in process (the
function ``rules/common.smk`` calls); a few go through a real ``snakemake -n``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from snakemake.utils import update_config

from gfmtune.cli import main
from gfmtune.config import ConfigError, validate_config
from gfmtune.models import catalog
from gfmtune.models.checkpoints import CheckpointError, locate, read_checkpoint
from gfmtune.models.croma import CromaOpticalEncoder
from gfmtune.train.settings import TrainSettings
from tests.data.fake_servers import FileServer
from tests.models.test_checkpoints import (
    TouchOnUnpickle,
    catalog_entry,
    croma_file,
    dino_teacher_file,
)
from tests.workflow_helpers import REPO, job_counts, run_snakemake

PRESET = yaml.safe_load((REPO / "workflow_config.yaml").read_text())
MAX_LINES = 40


def settings(**values: object) -> dict:
    return {"train": {"settings": values}}


#: (overlay on the paper preset, the key the message must name, what it must say is allowed)
CONFIG_FAULTS = [
    pytest.param({"trian": {"seeds": [1]}}, "trian", "allowed keys: data,", id="top-level-key"),
    pytest.param(settings(val_evry=2), "train.settings.val_evry", "did you mean 'val_every'",
                 id="settings-key"),
    pytest.param(settings(select_metric="mIoU"), "train.settings.select_metric",
                 "['miou_paper', 'miou', 'oa']", id="select-metric"),
    pytest.param(settings(val_every=0), "train.settings.val_every", "integer >= 1",
                 id="val-every-0"),
    pytest.param(settings(epochs=0), "train.settings.epochs", "integer >= 1", id="epochs-0"),
    pytest.param(settings(batch_size=0), "train.settings.batch_size", "integer >= 1",
                 id="batch-size-0"),
    pytest.param(settings(keep_checkpoint="last"), "train.settings.keep_checkpoint",
                 "['best', 'none']", id="keep-checkpoint-last"),
    pytest.param(settings(precision="fp16"), "train.settings.precision",
                 "['auto', 'bf16', 'fp32']", id="precision"),
    pytest.param(settings(lr=-0.001), "train.settings.lr", "number > 0", id="lr-negative"),
    pytest.param(settings(epochs="1.5"), "train.settings.epochs", "'1.5' is not of type",
                 id="epochs-not-integer"),
    pytest.param(settings(betas=[0.9]), "train.settings.betas", "of 2 items", id="betas-short"),
    pytest.param(settings(milestones=[0.6, 1.5]), "train.settings.milestones[1]", "< 1",
                 id="milestone-above-1"),
    pytest.param(settings(workers=-1), "train.settings.workers", "integer >= 0",
                 id="workers-negative"),
    pytest.param(settings(encoder_frames_per_call=0), "train.settings.encoder_frames_per_call",
                 "integer or null >= 1", id="frames-per-call-0"),
    pytest.param(settings(drop_last="maybe"), "train.settings.drop_last", "allowed: boolean",
                 id="drop-last-string"),
    pytest.param({"models": ["croma", "cromma"]}, "models[1]", "did you mean 'croma'",
                 id="model-name"),
    pytest.param({"manifests": {"label_percents": [0]}}, "manifests.label_percents[0]",
                 "number > 0 and <= 100", id="label-percent-0"),
    pytest.param({"manifests": {"label_percents": [10, 150]}}, "manifests.label_percents[1]",
                 "number > 0 and <= 100", id="label-percent-150"),
    pytest.param({"manifests": {"timesteps": [0, 6]}}, "manifests.timesteps[0]", "integer >= 1",
                 id="timesteps-0"),
    pytest.param({"data": {"source": "ftp"}}, "data.source", "'local', 'synthetic'",
                 id="data-source"),
    pytest.param({"run": "my run"}, "run", "matching ^[A-Za-z0-9._-]+$", id="run-name"),
    pytest.param({"train": {"seeds": [-1]}}, "train.seeds[0]", "integer >= 0 and <= 4294967295",
                 id="seed-negative"),
    pytest.param({"train": {"seeds": [1e20]}}, "train.seeds[0]", "<= 4294967295",
                 id="seed-huge"),
    pytest.param({"train": {"extra_seeds": [-3]}}, "train.extra_seeds[0]", "integer >= 0",
                 id="extra-seed-negative"),
    pytest.param({"manifests": {"seed": -2}}, "manifests.seed", "integer >= 0",
                 id="manifest-seed-negative"),
    pytest.param({"train": {"device": "gpu"}}, "train.device",
                 "matching ^(auto|cpu|cuda(:[0-9]+)?)$", id="device-gpu"),
    pytest.param({"train": {"device": "cuda:x"}}, "train.device",
                 "matching ^(auto|cpu|cuda(:[0-9]+)?)$", id="device-cuda-x"),
]  # fmt: skip


def config_with(overlay: dict) -> dict:
    """The paper preset with ``overlay`` merged in, as Snakemake merges a ``--configfile``."""
    config = copy.deepcopy(PRESET)
    update_config(config, copy.deepcopy(overlay))
    return config


def assert_names(message: str, key: str, allowed: str) -> None:
    lines = [line for line in message.splitlines() if key in line]
    assert lines, f"{key!r} not named in:\n{message}"
    assert any(allowed in line for line in lines), f"{allowed!r} not in:\n{message}"


@pytest.mark.parametrize("overlay, key, allowed", CONFIG_FAULTS)
def test_bad_config_is_one_line_naming_key_and_allowed(overlay, key: str, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(config_with(overlay))
    message = str(err.value)
    assert_names(message, key, allowed)
    assert len(message.splitlines()) == 2, message  # the heading and the one problem


@pytest.mark.parametrize(
    "overlay, key, allowed",
    [p for p in CONFIG_FAULTS if p.values[1].startswith("train.settings.")],
)
def test_gfmtune_train_rejects_the_same_settings_alike(overlay, key: str, allowed: str) -> None:
    """``TrainSettings.from_mapping`` (``gfmtune train --settings-json``) says what the
    workflow says, from the same schema."""
    with pytest.raises(ConfigError) as workflow_err:
        validate_config(config_with(overlay))
    with pytest.raises(ConfigError) as train_err:
        TrainSettings.from_mapping(overlay["train"]["settings"])
    assert str(train_err.value) == str(workflow_err.value)


def test_gfmtune_train_cli_stops_before_any_work(tmp_path: Path, caplog) -> None:
    timesteps = tmp_path / "6.csv"
    timesteps.write_text("patch_id,frames,days\n1,0 1 2 3 4 5,0 5 10 15 20 25\n")
    out = tmp_path / "cell"
    args = ["train", "--store", str(tmp_path / "none.zarr"), "--label-split",
            str(tmp_path / "10.csv"), "--timesteps", str(timesteps), "--model", "utae_tiny",
            "--settings-json", json.dumps({"val_every": 0}), "--out", str(out)]  # fmt: skip
    with caplog.at_level(logging.ERROR):
        assert main(args) == 1
    assert "train.settings.val_every: 0 is less than the minimum of 1" in caplog.text
    assert not out.exists()


#: Several faults in one dry run: each is named, and the output stays short.
SEVERAL = {
    "train": {"settings": {"select_metric": "mIoU", "val_every": 0, "keep_checkpoint": "last",
                           "lr": "0.001x"}},
    "manifests": {"label_percents": [150]},
}  # fmt: skip
SEVERAL_NAMED = [
    "train.settings.select_metric",
    "train.settings.val_every",
    "train.settings.keep_checkpoint",
    "train.settings.lr",
    "manifests.label_percents[0]",
    "['best', 'none']",
    "integer >= 1",
]


@pytest.mark.parametrize(
    "overlay, expected",
    [
        pytest.param({"trian": {}}, ["trian: unknown key"], id="top-level-key"),
        pytest.param(SEVERAL, SEVERAL_NAMED, id="five-at-once"),
    ],
)
def test_snakemake_dry_run_stops_with_a_short_message(
    tmp_path: Path, overlay: dict, expected: list[str]
) -> None:
    result = run_snakemake(tmp_path, "-n", config=overlay)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for text in expected:
        assert text in output, output
    assert len(output.splitlines()) < MAX_LINES, output
    assert "properties" not in output, "the schema must not be dumped"
    assert not (tmp_path / "results").exists()


def test_nested_command_line_values_are_read_as_yaml(tmp_path: Path) -> None:
    """``--config key='{...}'`` hands nested values over as strings; they are read as the
    schema's types (and YAML 1.1's string ``1e-3`` as a number) before validation."""
    result = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", "--config",
                           "manifests={timesteps: [1, 6], label_percents: [10]}",
                           "train={settings: {lr: 1e-3, drop_last: false}}")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert job_counts(result.stdout)["timestep_manifest"] == 2
    assert '"lr": 0.001, "drop_last": false' in result.stdout
    config = config_with({"train": {"seeds": ["0", "x"]}, "manifests": {"seed": "true"}})
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert "train.seeds[1]: 'x' is not of type 'integer'" in str(err.value)
    assert "manifests.seed: 'true' is not of type 'integer'" in str(err.value)


def test_settings_stay_as_written_and_the_rest_gets_defaults() -> None:
    """Defaults are not written into ``train.settings``: the training jobs' params (Snakemake
    reruns a job whose params changed) do not change when a setting's default does."""
    config = config_with({"train": {"settings": {"epochs": 3}}, "data": {"source": "zenodo"}})
    del config["weights"]
    validate_config(config)
    assert config["train"]["settings"] == {"epochs": 3}
    assert config["weights"] == {"dir": "results/weights", "retries": 5, "offline": False}
    assert config["data"]["zenodo"]["record"] == "10908628"


# -- checkpoints -------------------------------------------------------------------------------


def _wrong_size(good: bytes) -> bytes:
    return good[: len(good) // 2]  # a copy cut off


def _wrong_content(good: bytes) -> bytes:
    return bytes(len(good))  # right size, wrong bytes


def _garbage(good: bytes) -> bytes:
    return b"<html>404 Not Found</html>"  # a saved error page


@pytest.mark.parametrize("make_wrong", [_wrong_size, _wrong_content, _garbage])
def test_gfmtune_weights_sets_a_wrong_file_aside(
    tmp_path: Path, caplog, monkeypatch: pytest.MonkeyPatch, make_wrong
) -> None:
    good = tmp_path / "CROMA_toy.pt"
    croma_file(good, 64, 4)
    with FileServer({}):  # answers 404: like this project's machines, offline
        ckpt = catalog_entry(good, "croma")
        monkeypatch.setitem(catalog.CHECKPOINTS, "toy", ckpt)
        folder, stamp = tmp_path / "weights", tmp_path / "toy.json"
        folder.mkdir()
        wrong = make_wrong(good.read_bytes())
        (folder / ckpt.filename).write_bytes(wrong)
        with caplog.at_level(logging.ERROR):
            code = main(["weights", "--checkpoint", "toy", "--dir", str(folder),
                         "--stamp", str(stamp), "--retries", "0"])  # fmt: skip
    assert code == 1 and not stamp.exists()
    [aside] = folder.glob(f"{ckpt.filename}.rejected-*")
    assert aside.read_bytes() == wrong, "moved aside, not deleted"
    assert not (folder / ckpt.filename).exists()
    error = caplog.records[-1].getMessage()
    assert str(folder / ckpt.filename) in error and f"moved aside to {aside}" in error
    assert ckpt.sha256 in error and hashlib.sha256(wrong).hexdigest() in error


def _payload_not_in_catalog(tmp_path: Path, marker: Path) -> tuple[Path, dict]:
    path = tmp_path / "B13_vits16_dino_0099_ckpt.pth"
    dino_teacher_file(path, args=TouchOnUnpickle(marker))
    return path, {"layout": "dino_teacher"}


def _payload_other_sha(tmp_path: Path, marker: Path) -> tuple[Path, dict]:
    path = tmp_path / "B13_vits16_dino_0099_ckpt.pth"
    dino_teacher_file(path)
    published = catalog_entry(path, "dino_teacher")
    dino_teacher_file(path, args=TouchOnUnpickle(marker))
    return path, {"layout": "dino_teacher", "expected": published}


def _payload_in_tensor_layout(tmp_path: Path, marker: Path) -> tuple[Path, dict]:
    path = tmp_path / "CROMA_large.pt"
    torch.save({"s2_encoder": {"w": torch.zeros(1)}, "hook": TouchOnUnpickle(marker)}, path)
    return path, {"layout": "croma"}


def _not_a_torch_file(tmp_path: Path, marker: Path) -> tuple[Path, dict]:
    path = tmp_path / "CROMA_large.pt"
    path.write_bytes(b"\x80\x04garbage that is no zip archive")
    return path, {"layout": "croma"}


def _truncated(tmp_path: Path, marker: Path) -> tuple[Path, dict]:
    path = tmp_path / "CROMA_large.pt"
    croma_file(path, 64, 4)
    path.write_bytes(path.read_bytes()[:5000])
    return path, {"layout": "croma"}


@pytest.mark.parametrize(
    "make, message",
    [
        (_payload_not_in_catalog, "not a catalogued checkpoint"),
        (_payload_other_sha, "refused, not unpickled: .*sha256 mismatch"),
        (_payload_in_tensor_layout, "cannot read checkpoint"),
        (_not_a_torch_file, "cannot read checkpoint"),
        (_truncated, "cannot read checkpoint"),
    ],
)
def test_bad_checkpoint_is_refused_without_running_it(tmp_path: Path, make, message: str) -> None:
    marker = tmp_path / "payload-ran"
    path, kwargs = make(tmp_path, marker)
    with pytest.raises(CheckpointError, match=message) as err:
        read_checkpoint(path, **kwargs)
    assert str(path) in str(err.value)
    assert not marker.exists(), "a pickled payload ran"


def test_checkpoint_with_wrong_keys_names_file_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "CROMA_large.pt"
    croma_file(path, 64, 4, mutate=lambda s: s.pop("linear_input.weight"))
    encoder = CromaOpticalEncoder("tiny", out_indices=(0, 1, 2, 3))
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\), e.g. \['linear_input") as e:
        encoder.load_encoder_state(read_checkpoint(path, "croma"), str(path))
    assert str(path) in str(e.value)


def test_missing_checkpoint_names_file_url_and_digest(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found") as err:
        locate(catalog.DINO_TORCHGEO, tmp_path)
    text = str(err.value)
    assert str(tmp_path / catalog.DINO_TORCHGEO.filename) in text
    assert catalog.DINO_TORCHGEO.url in text and catalog.DINO_TORCHGEO.sha256 in text
