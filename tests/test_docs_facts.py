"""Counts and versions the docs quote, kept true: job counts against ``snakemake -n`` for the
preset the text talks about, ``gfmtune plan`` excerpts against the command, torch and CUDA
versions against ``pyproject.toml``, the README's install and the lock, and the plug-in example of
docs/add-an-encoder.md against what it builds. Each test fails when a doc drifts."""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from gfmtune.data.synthetic import SyntheticSpec, write_synthetic_pastis
from gfmtune.models import catalog, registry
from gfmtune.models.contract import warn_small_grid
from gfmtune.models.params import parameter_table
from gfmtune.models.registry import build_encoder, get_spec
from gfmtune.plan import command, report
from tests.workflow_helpers import REPO, job_counts, readme_commands, run_snakemake

PRESET = REPO / "workflow_config.yaml"
DEMO = REPO / "config" / "demo.yaml"
FENCED = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
CELL = "results/demo/cells/model~croma_tiny/ft_rate~1/label_percent~10/timesteps~15/seed~0"


def text(name: str) -> str:
    """A document of the repository (``README.md``, ``docs/<page>.md``), its lines joined by spaces
    and runs of white space made one (the docs wrap sentences anywhere)."""
    return " ".join((REPO / name).read_text().split())


def quoted(name: str, pattern: str) -> str:
    """The first group of the one match of ``pattern`` in the document's text."""
    found = re.findall(pattern, text(name))
    assert len(found) == 1, f"{name}: {len(found)} matches of {pattern!r}, expected 1"
    return found[0]


def blocks(name: str, language: str = "") -> list[str]:
    """The document's fenced code blocks of ``language`` (no language: plain blocks)."""
    return [b for lang, b in FENCED.findall((REPO / name).read_text()) if lang == language]


def block(name: str, first: str, language: str = "") -> str:
    """The one code block of the document whose text starts with ``first``."""
    found = [b for b in blocks(name, language) if b.startswith(first)]
    assert len(found) == 1, f"{name}: {len(found)} code blocks start with {first!r}"
    return found[0]


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, int]]:
    """``planned(name, *args, config=...)``: the job counts of ``snakemake -n`` with those
    arguments, run once per name in a scratch folder."""
    runs: dict[str, dict[str, int]] = {}

    def counts(name: str, *args: str, config: dict | None = None) -> dict[str, int]:
        if name not in runs:
            work = tmp_path_factory.mktemp(name)
            result = run_snakemake(work, "-n", "--cores", "1", *args, config=config)
            assert result.returncode == 0, result.stderr[-3000:]
            runs[name] = job_counts(result.stdout)
        return runs[name]

    return counts


def test_paper_preset_counts(planned: Callable[..., dict[str, int]]) -> None:
    counts = planned("paper")
    assert int(quoted("docs/reproduce.md", r"`snakemake -n` shows (\d+) jobs")) == counts["total"]
    assert int(quoted("docs/training.md", r"(\d+) jobs for the paper preset")) == counts["train"]
    # config/authors.yaml plans the preset's cells (tests/test_workflow.py checks that it does)
    assert int(quoted("docs/reproduce.md", r"plans the same (\d+) cells")) == counts["train"]


def test_ft_sweep_counts(planned: Callable[..., dict[str, int]]) -> None:
    counts = planned("ft_sweep", "--configfile", str(REPO / "config" / "ft_sweep.yaml"))
    assert int(quoted("README.md", r"`config/ft_sweep.yaml`, (\d+) cells")) == counts["train"]
    assert int(quoted("docs/results.md", r"(\d+) cells, in `results/ft_sweep/`")) == counts["train"]


def test_demo_counts(planned: Callable[..., dict[str, int]]) -> None:
    counts = planned("demo", "--configfile", str(DEMO))
    assert int(quoted("docs/demo.md", r"(\d+) training cells of")) == counts["train"]


def real_data_overlay() -> dict:
    """The overlay of docs/real-data.md (its one YAML block)."""
    (overlay,) = blocks("docs/real-data.md", "yaml")
    return yaml.safe_load(overlay)


def test_real_data_page_shows_the_dry_run_of_its_overlay(
    planned: Callable[..., dict[str, int]], tmp_path: Path
) -> None:
    """The page's job table is what ``snakemake -n`` prints for its overlay, on a folder that
    passes the dry run's check of ``data.root``."""
    config = real_data_overlay()
    assert config["data"]["source"] == "local"
    root = write_synthetic_pastis(tmp_path / "pastis", SyntheticSpec(10, 16, (3,), seed=0))
    config["data"]["root"] = str(root)
    counts = planned("real_data", config=config)
    assert job_counts(block("docs/real-data.md", "Job stats:")) == counts


def test_real_data_page_quotes_gfmtune_plan(tmp_path: Path) -> None:
    """Each line of the page's ``gfmtune plan`` excerpts is the command's, in its order."""
    overlay = tmp_path / "my-run.yaml"
    overlay.write_text(yaml.safe_dump(real_data_overlay()))
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--preset", str(PRESET), "--configfile", str(overlay)])
    output = report.text(command.build(args)).splitlines()
    excerpts = [block("docs/real-data.md", "gfmtune plan:"), block("docs/real-data.md", "disk ")]
    for excerpt in excerpts:
        position = 0
        for line in excerpt.splitlines():
            assert line in output[position:], f"not in gfmtune plan's output (in order): {line}"
            position = output.index(line, position) + 1


def torch_bounds() -> dict[str, tuple[str, str]]:
    """(lower, upper) bound of torch and torchvision in pyproject.toml's dependencies."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = {}
    for dep in deps:
        match = re.fullmatch(r"(torch|torchvision)>=([\d.]+),<=([\d.]+)", dep.replace(" ", ""))
        if match:
            bounds[match.group(1)] = (match.group(2), match.group(3))
    return bounds


def test_torch_versions_quoted_are_the_pins() -> None:
    install = readme_commands()[0][0].split()[2:]  # pip install torch==... torchvision==...
    pair = dict(req.split("==") for req in install)
    bounds = torch_bounds()
    assert {name: upper for name, (_, upper) in bounds.items()} == pair
    docs = ["README.md", *(f"docs/{p.name}" for p in sorted((REPO / "docs").glob("*.md")))]
    for name in docs:
        for torch, vision in re.findall(r"pip install torch==(\S+) torchvision==(\S+)", text(name)):
            assert (torch, vision) == (pair["torch"], pair["torchvision"]), name
    assert (
        quoted("docs/install.md", r"The PyPI wheels of torch (\S+) are CUDA builds")
        == pair["torch"]
    )
    assert quoted("docs/install.md", r"one torch (\S+) wheel for CPython") == pair["torch"]
    lower, upper = bounds["torch"]
    newest = ".".join(upper.split(".")[:2])
    assert quoted("docs/performance.md", r"own torch \((\S+ to \S+)\)") == f"{lower} to {newest}"


def test_cuda_versions_quoted_are_the_locks() -> None:
    """Every ``CUDA x.y`` in the README and docs is the CUDA of the lock's torch build (its
    nvidia-cuda-runtime), as ``torch.version.cuda`` reports it."""
    lock = (REPO / "envs" / "lock-linux-x86_64-py3.11.txt").read_text()
    (runtime,) = re.findall(r"^nvidia-cuda-runtime==(\d+\.\d+)\.", lock, re.MULTILINE)
    assert quoted("docs/install.md", r"`torch.version.cuda` is `([\d.]+)`") == runtime
    docs = ["README.md", *(f"docs/{p.name}" for p in sorted((REPO / "docs").glob("*.md")))]
    quoted_versions = {
        (name, version) for name in docs for version in re.findall(r"CUDA (\d+\.\d+)", text(name))
    }
    assert {v for _, v in quoted_versions} == {runtime}, sorted(quoted_versions)
    assert f"this torch is built for CUDA {runtime} and finds" in text("docs/troubleshooting.md")


@pytest.fixture
def doc_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """docs/add-an-encoder.md's plug-in module, imported; its models unregistered afterwards."""
    module = block("docs/add-an-encoder.md", "# my_encoders.py", "python")
    (tmp_path / "my_encoders.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(registry.REGISTRY)
    try:
        importlib.import_module("my_encoders")
        yield
    finally:
        sys.modules.pop("my_encoders", None)
        for name in set(registry.REGISTRY) - before:
            del registry.REGISTRY[name], catalog.MODELS[name]


def test_plugin_example_decoder_sizes_and_grids(
    doc_plugin: None, caplog: pytest.LogCaptureFixture
) -> None:
    page = "docs/add-an-encoder.md"
    table = block(page, "name,model,decoder_only_m")
    names = [line.split(",")[0] for line in table.splitlines()[1:]]
    assert names == ["conv16", "conv4_tiny"]
    assert f"--models {' '.join(names)}" in text(page)
    rows = parameter_table(names)
    assert rows.to_csv(index=False) == table
    paper = rows.iloc[0]
    decoder, encoder = quoted(
        page, r"([\d.]+) million decoder parameters around a ([\d.]+) million"
    )
    assert (decoder, encoder) == (
        f"{paper.decoder_only_m:.1f}",
        f"{paper.whole_network_m - paper.decoder_only_m:.1f}",
    )
    assert yaml.safe_load(DEMO.read_text())["data"]["synthetic"]["size"] == 32  # "32 px patches"
    conv16, tiny = get_spec("conv16"), get_spec("conv4_tiny")
    assert (conv16.decoder_channels, conv16.ltae_heads) == (512, 16)
    assert {"decoder_channels": tiny.decoder_channels, "ltae_heads": tiny.ltae_heads} == (
        registry.TINY_DECODER
    )
    with caplog.at_level(logging.WARNING, logger="gfmtune.models.contract"):
        assert warn_small_grid(build_encoder(conv16, None), conv16, 128) == (8, 8)
        assert warn_small_grid(build_encoder(tiny, None), tiny, 32) == (8, 8)
        assert caplog.records == []
        assert warn_small_grid(build_encoder(conv16, None), conv16, 32) == (2, 2)
    assert [r.getMessage() for r in caplog.records] == [block(page, "model 'conv16'").strip()]


def test_config_forms_and_cell_targets_behave_as_documented(tmp_path: Path) -> None:
    """docs/configuration.md: a dotted --config key dies in Snakemake's parser; a target after
    --configfile is read as a config file; after ``--`` it plans the cell's 5 jobs."""
    page = text("docs/configuration.md")
    dotted = run_snakemake(tmp_path, "-n", "--configfile", str(DEMO),
                           "--config", "train.settings.epochs=2")  # fmt: skip
    error = "Invalid config definition: Config entry must start with a valid identifier."
    assert dotted.returncode != 0 and error in dotted.stdout + dotted.stderr and error in page
    target = f"{CELL}/metrics.json"
    late = run_snakemake(tmp_path, "-n", "--configfile", str(DEMO), target)
    assert late.returncode != 0
    missing = f"FileNotFoundError: [Errno 2] No such file or directory: '{target}'"
    assert missing in late.stdout + late.stderr
    assert "FileNotFoundError: [Errno 2] No such file or directory:" in page
    cell = run_snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(DEMO), "--", target)
    assert cell.returncode == 0, cell.stderr[-3000:]
    counts = job_counts(cell.stdout)
    assert counts["total"] == 5 and counts["train"] == 1
    assert f"the train job ({counts['total']} jobs)" in page
