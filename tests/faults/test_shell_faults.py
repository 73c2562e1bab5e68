"""Fault matrix, shell side (issue 19 section 1): a config value never becomes shell code.

Every shell command the workflow plans is rendered by Snakemake itself (a dry run that records
each job's command) with config values holding spaces, quotes, ``$()``, backticks, ``;``,
newlines and non-ASCII text, then run by bash as Snakemake runs it, against a stand-in
``gfmtune`` that records its arguments. Nothing the values hold may execute, and each value
must reach ``gfmtune`` whole, as one argument. A real run with spaces and non-ASCII text in
every path closes the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.data.fake_servers import write_small_dataset
from tests.workflow_helpers import OFFLINE_ENV, REPO, run_snakemake

#: The file a payload creates when it runs as shell code (relative: in the job's folder).
MARK = "pwned"
PAYLOADS = {
    "space": "a b",
    "single-quote": "it's",
    "double-quote": 'say "hi"',
    "dollar-paren": f"$(touch {MARK})",
    "backticks": f"`touch {MARK}`",
    "semicolon": f"x; touch {MARK}",
    "newline": f"x\ntouch {MARK}",
    "non-ascii": "données 数据 é",
    "all": f"a b'c\"d $(touch {MARK}) `touch {MARK}`; touch {MARK}\ntouch {MARK} é",
}
#: Rules with a shell command (``all`` and ``run_config`` have none); checked against
#: ``snakemake --list-rules`` below.
SHELL_RULES = {
    "download", "store", "label_splits", "label_split_variant", "timestep_manifest",
    "weights", "train", "train_variant", "results", "params", "predict_maps", "training_curves",
}  # fmt: skip
#: A small plan that reaches every shell rule: a pretrained model (weights), a split variant.
PLAN = {
    "models": ["utae_tiny", "dino"],
    "manifests": {"label_percents": [10, 100], "timesteps": [1],
                  "split_variants": {"rnd": {"label_strategy": "random"}}},
    "train": {"device": "cpu"},
}  # fmt: skip


def render(workdir: Path, config: dict) -> list[dict]:
    """Each planned job's shell command as Snakemake renders it (``tests/shell_render.py``)."""
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(config, allow_unicode=True))
    out = workdir / "rendered.json"
    cmd = [sys.executable, "-m", "tests.shell_render", str(out), "--snakefile",
           str(REPO / "Snakefile"), "--directory", str(workdir), "-n", "--cores", "1",
           "--configfile", str(workdir / "overlay.yaml")]  # fmt: skip
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(out.read_text())


def run_rendered(workdir: Path, jobs: list[dict]) -> list[list[str]]:
    """Run each rendered command with bash as Snakemake does (``set -euo pipefail``), with a
    stand-in ``gfmtune`` first on PATH; the argument lists it received."""
    bin_dir, argv_log = workdir / "bin", workdir / "argv.jsonl"
    bin_dir.mkdir()
    stand_in = bin_dir / "gfmtune"
    stand_in.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "with open(os.environ['ARGV_LOG'], 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    stand_in.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "ARGV_LOG": str(argv_log)}
    for job in jobs:
        for log in job["log"]:
            (workdir / log).parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["bash", "-c", f"set -euo pipefail; {job['shellcmd']}"],
                              cwd=workdir, env=env, capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, (job, done.stderr)
    return [json.loads(line) for line in argv_log.read_text().splitlines()]


def assert_values_arrive_whole(workdir: Path, calls: list[list[str]], values: list[str]) -> None:
    assert not list(workdir.rglob(MARK)), "a config value ran as shell code"
    arguments = {arg for call in calls for arg in call}
    for value in values:
        assert value in arguments, f"{value!r} did not reach gfmtune as one argument"
    pieces = [arg for arg in arguments if MARK in arg and arg not in values]
    assert not pieces, f"a config value was split into pieces: {pieces}"


def test_shell_rules_are_the_workflow_rules_without_run_blocks(tmp_path: Path) -> None:
    listed = run_snakemake(tmp_path, "--list-rules")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) - {"all", "run_config"} == SHELL_RULES


@pytest.mark.parametrize("payload", PAYLOADS.values(), ids=PAYLOADS.keys())
def test_paths_never_become_shell_code(tmp_path: Path, payload: str) -> None:
    """Every shell rule, with the download and weights folders holding the payload."""
    values = [f"raw {payload}", f"weights {payload}"]
    config = PLAN | {"data": {"source": "synthetic", "download_dir": values[0]},
                     "weights": {"dir": values[1]}}  # fmt: skip
    jobs = render(tmp_path, config)
    assert {job["rule"] for job in jobs} == SHELL_RULES
    calls = run_rendered(tmp_path, jobs)
    assert len(calls) == len(jobs) + 1  # the params rule calls gfmtune twice
    assert_values_arrive_whole(tmp_path, calls, values)
    weighted = [call for call in calls if call[0] in ("train", "predict-maps")]
    assert all(call[call.index("--weights-dir") + 1] == values[1] for call in weighted
               if "--weights-dir" in call)  # fmt: skip


def _local(root: Path, payload: str) -> tuple[dict, list[str]]:
    folder = write_small_dataset(root / f"PASTIS {payload}")
    return {"source": "local", "root": str(folder)}, [str(folder)]


def _huggingface(root: Path, payload: str) -> tuple[dict, list[str]]:
    values = [f"org/{payload}", f"rev {payload}", f"locks/{payload}.json", f"http://h/{payload}"]
    hub = dict(zip(["repo_id", "revision", "lock_file", "endpoint"], values, strict=True))
    return {"source": "huggingface", "huggingface": hub}, values


def _zenodo(root: Path, payload: str) -> tuple[dict, list[str]]:
    values = [f"10 {payload}", f"http://z/{payload}", f"S2 {payload}.zip", "b c.zip"]
    zenodo = {"record": values[0], "api": values[1], "files": values[2:]}
    return {"source": "zenodo", "zenodo": zenodo}, values


@pytest.mark.parametrize("source", [_local, _huggingface, _zenodo],
                         ids=["local", "huggingface", "zenodo"])  # fmt: skip
def test_data_source_strings_never_become_shell_code(tmp_path: Path, source) -> None:
    data, values = source(tmp_path, PAYLOADS["all"])
    config = {"models": ["utae_tiny"], "manifests": {"label_percents": [100], "timesteps": [1]},
              "data": data}  # fmt: skip
    jobs = [job for job in render(tmp_path, config) if job["rule"] == "download"]
    assert len(jobs) == 1
    calls = run_rendered(tmp_path, jobs)
    assert calls[0][:2] == ["download", "--source"]
    assert_values_arrive_whole(tmp_path, calls, values)


@pytest.mark.parametrize("device", ["gpu", f"cpu$(touch {MARK})", "cuda:", "cuda:0;x"])
def test_train_device_is_checked_at_the_dry_run(tmp_path: Path, device: str) -> None:
    result = run_snakemake(tmp_path, "-n", config={"train": {"device": device}})
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "train.device" in output and "^(auto|cpu|cuda(:[0-9]+)?)$" in output, output
    assert not (tmp_path / "results").exists() and not list(tmp_path.rglob(MARK))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_run_with_spaces_in_every_path_works_end_to_end(tmp_path: Path) -> None:
    """The working folder, the download folder and the weights folder hold spaces and
    non-ASCII text: every stage runs, maps and figures included."""
    workdir = tmp_path / "my work é"
    workdir.mkdir()
    config = {
        "run": "spaced",
        "data": {"source": "synthetic", "download_dir": "raw data/PASTIS é",
                 "synthetic": {"patches": 30, "size": 32, "frames_per_tile": [8, 12]}},
        "weights": {"dir": "pretrained weights é"},
        "models": ["utae_tiny"],
        "manifests": {"label_percents": [100], "timesteps": [1]},
        "store": {"threads": 1},
        "train": {"device": "cpu", "gpus": 0, "settings": {"epochs": 1, "batch_size": 4,
                                                         "workers": 0}},
    }  # fmt: skip
    result = run_snakemake(workdir, "--cores", "2", config=config, timeout=800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (workdir / "raw data" / "PASTIS é" / "metadata.geojson").is_file()
    run = workdir / "results" / "spaced"
    table = pd.read_csv(run / "tables" / "miou.csv")
    assert table.model.tolist() == ["U-TAE"] and table.miou_paper.between(0, 100).all()
    assert (run / "figures" / "predictions.png").stat().st_size > 0
    assert (run / "figures" / "training_curves.png").stat().st_size > 0
