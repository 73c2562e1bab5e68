"""Fault matrix of two contracts (issue 19): extracting an archive never removes or overwrites
what the extraction did not create (§5), and a plug-in encoder is checked once, on a dummy
batch, when its model is built (§8).

Each failing case checks the exit code (or the exception), a message naming the paths (or the
model, encoder and level), and that nothing a rerun would trust is left: no inventory and no
extraction marker after a conflict, the user's files byte for byte as they were.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tarfile
import textwrap
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gfmtune.cli import main
from gfmtune.data.download import local
from gfmtune.models import catalog, registry
from gfmtune.models.contract import LEVEL_DTYPES, EncoderContractError, check_output
from gfmtune.models.plugins import PLUGINS_ENV
from gfmtune.models.policies import InputPolicy
from gfmtune.models.registry import build_model, register_model
from gfmtune.train import cell_state, job
from gfmtune.train.feature_cache import STORED
from gfmtune.train.job import Cell
from tests.data.fake_servers import write_small_dataset
from tests.train.conftest import FAST, inputs, train_argv
from tests.train.conftest import train_data as train_data  # the fixture, for this module

# --------------------------------------------------------------------------------------------
# §5: nothing of the user's is ever deleted

ARCHIVES = ("data.zip", "data.tar.gz")


@pytest.fixture(scope="module")
def pastis_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a small PASTIS folder ``PASTIS/`` (read-only for the tests)."""
    tree = tmp_path_factory.mktemp("tree")
    write_small_dataset(tree / "PASTIS")
    return tree


def archive_of(tree: Path, out: Path, extra: dict[str, str] | None = None) -> Path:
    """Archive ``tree``'s entries at the top of ``out`` (.zip or .tar.gz), plus ``extra``
    members (name -> text)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.parent / f"{out.name}.staged"
    shutil.copytree(tree, staged)
    for name, text in (extra or {}).items():
        (staged / name).parent.mkdir(parents=True, exist_ok=True)
        (staged / name).write_text(text)
    if out.name.endswith(".zip"):
        with zipfile.ZipFile(out, "w") as zf:
            for path in sorted(staged.rglob("*")):
                zf.write(path, path.relative_to(staged).as_posix())
    else:
        with tarfile.open(out, "w:gz") as tf:
            for entry in sorted(staged.iterdir()):
                tf.add(entry, arcname=entry.name)
    shutil.rmtree(staged)
    return out


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes) and link (its target) under ``root``, by relative path."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = f"-> {os.readlink(path)}"
        elif path.is_file():
            found[rel] = path.read_bytes()
    return found


def visible(root: Path) -> dict[str, bytes | str]:
    """:func:`snapshot` without the hidden extraction markers."""
    return {rel: data for rel, data in snapshot(root).items() if not rel.startswith(".")}


def download(archive: Path, dest: Path) -> int:
    """``gfmtune download --source local`` of ``archive`` into ``dest``; its exit code."""
    inventory = dest.parent / "inventory.json"
    argv = ["download", "--source", "local", "--root", str(archive), "--dest", str(dest)]
    return main([*argv, "--inventory", str(inventory)])


def marker_of(archive: Path, dest: Path) -> dict:
    """What the extraction marker of ``archive`` in ``dest`` records (empty when none)."""
    marker = dest / f".{archive.name}.extracted"
    return json.loads(marker.read_text()) if marker.is_file() else {}


def error_of(caplog: pytest.LogCaptureFixture) -> str:
    """The error the command logged (exactly one)."""
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    return errors[0]


def _user_folder(dest: Path) -> None:
    (dest / "notes" / "sub").mkdir(parents=True)
    (dest / "notes" / "todo.txt").write_text("my todo")
    (dest / "notes" / "sub" / "draft.txt").write_text("my draft")


def _user_file(dest: Path) -> None:
    (dest / "notes").write_text("my own notes")


def _user_link(dest: Path) -> None:
    (dest / "elsewhere.txt").write_text("linked")
    (dest / "notes").symlink_to("elsewhere.txt")


def _user_edited_dataset_file(dest: Path) -> None:
    """A PASTIS copy of the user's (no extraction wrote it) with its metadata edited."""
    (dest / "PASTIS").mkdir()
    (dest / "PASTIS" / "metadata.geojson").write_text('{"edited": "by hand"}')


@dataclass(frozen=True)
class Conflict:
    """What the user has in ``download_dir``, the archive member that would replace it, the
    path the error must name and why."""

    existing: Callable[[Path], None]
    member: str
    path: str
    reason: str


CONFLICTS = {
    "file member over user folder": Conflict(
        _user_folder, "notes", "notes", "a file member would replace the existing folder"
    ),
    "file member over user file of other content": Conflict(
        _user_file, "notes", "notes", "the existing file differs"
    ),
    "folder member over user file": Conflict(
        _user_file, "notes/todo.txt", "notes", "a folder member would replace the existing file"
    ),
    "file member over user link": Conflict(
        _user_link, "notes", "notes", "a file member would replace the existing link"
    ),
    "dataset file over user's edited copy": Conflict(
        _user_edited_dataset_file,
        "README.txt",
        "PASTIS/metadata.geojson",
        "the existing file differs",
    ),
}


@pytest.mark.parametrize("name", ARCHIVES)
@pytest.mark.parametrize("conflict", CONFLICTS.values(), ids=CONFLICTS)
def test_extraction_never_replaces_what_it_did_not_create(
    pastis_tree: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    conflict: Conflict,
    name: str,
) -> None:
    archive = archive_of(pastis_tree, tmp_path / "in" / name, {conflict.member: "archived"})
    dest = tmp_path / "raw"
    dest.mkdir()
    conflict.existing(dest)
    before = snapshot(dest)
    with caplog.at_level(logging.ERROR):
        assert download(archive, dest) == 1
    message = error_of(caplog)
    assert f"{archive}: extracting into {dest} would replace" in message
    assert f"-> {dest / conflict.path}: {conflict.reason}" in message
    assert repr(conflict.path) in message  # the member is named as in the archive
    assert snapshot(dest) == before  # the user's files as they were, nothing moved in
    assert not (tmp_path / "inventory.json").exists()
    assert not list(dest.glob(".*"))  # no marker, no temporary folder left


def test_conflict_lists_every_path_and_then_the_remedy_works(
    pastis_tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two conflicts in one message; once the user moves them aside, extraction succeeds."""
    archive = archive_of(pastis_tree, tmp_path / "in" / "data.zip", {"notes": "a", "log": "b"})
    dest = tmp_path / "raw"
    dest.mkdir()
    _user_folder(dest)
    (dest / "log").write_text("my log")
    with caplog.at_level(logging.ERROR):
        assert download(archive, dest) == 1
    message = error_of(caplog)
    assert "would replace 2 path(s) it did not create" in message
    assert f"{dest / 'notes'}:" in message and f"{dest / 'log'}:" in message
    assert len(message.splitlines()) == 3  # the summary, then one line per conflict
    aside = tmp_path / "aside"
    aside.mkdir()
    for entry in ("notes", "log"):
        (dest / entry).rename(aside / entry)
    assert download(archive, dest) == 0
    assert (dest / "notes").read_text() == "a" and (aside / "notes" / "todo.txt").is_file()
    assert (tmp_path / "inventory.json").is_file()


def test_identical_user_file_is_kept_and_not_claimed(pastis_tree: Path, tmp_path: Path) -> None:
    archive = archive_of(pastis_tree, tmp_path / "in" / "data.zip", {"notes": "same"})
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "notes").write_text("same")
    stamp = (dest / "notes").stat().st_mtime_ns
    assert download(archive, dest) == 0
    assert (dest / "notes").stat().st_mtime_ns == stamp  # left as it was, not replaced
    recorded = marker_of(archive, dest)
    assert recorded["fingerprint"] and "notes" not in recorded["files"]
    assert "PASTIS/metadata.geojson" in recorded["files"]


@pytest.mark.parametrize("name", ARCHIVES)
def test_same_archive_rerun_skips_then_replaces_only_its_own(
    pastis_tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """A rerun of the same archive skips it; once the archive is touched (a new fingerprint,
    same content) it is extracted again over its own files, the user's left alone."""
    archive = archive_of(pastis_tree, tmp_path / "in" / name, {"notes": "archived"})
    dest = tmp_path / "raw"
    assert download(archive, dest) == 0
    (dest / "PASTIS" / "mine.txt").write_text("the user's")
    extracted = visible(dest)
    with caplog.at_level(logging.INFO):
        assert download(archive, dest) == 0
    assert any("already extracted" in r.getMessage() for r in caplog.records)
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 10**9))
    assert download(archive, dest) == 0
    assert visible(dest) == extracted
    assert str(archive.stat().st_mtime_ns) in marker_of(archive, dest)["fingerprint"]


class Interrupted(BaseException):
    """Stands for a kill in the middle of moving extracted files into place."""


@pytest.mark.parametrize("moved", [0, 1, 7])
def test_interrupted_merge_resumes(
    pastis_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moved: int
) -> None:
    """Killed after ``moved`` files were moved in, a rerun finishes the extraction: the files
    already moved are its own, the user's untouched."""
    archive = archive_of(pastis_tree, tmp_path / "in" / "data.zip", {"notes": "archived"})
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "mine.txt").write_text("the user's")
    replace, calls = os.replace, []

    def dying(src: str | Path, dst: str | Path) -> None:
        if ".extracting" in str(src):
            if len(calls) == moved:
                raise Interrupted
            calls.append(src)
        replace(src, dst)

    monkeypatch.setattr(local.os, "replace", dying)
    with pytest.raises(Interrupted):
        local.prepare_local(archive, dest)
    monkeypatch.undo()
    assert marker_of(archive, dest)["fingerprint"] is None  # not trusted as extracted
    assert download(archive, dest) == 0
    reference = tmp_path / "reference"
    assert download(archive, reference) == 0
    assert visible(dest) == visible(reference) | {"mine.txt": b"the user's"}
    assert not list(dest.glob(".*.extracting"))


def test_newer_archive_replaces_only_its_own_files(
    pastis_tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A new version of the archive replaces the files the old one wrote, unchanged; a file
    the user edited since is theirs: a conflict naming it, the edit kept."""
    archive = archive_of(pastis_tree, tmp_path / "in" / "data.zip", {"notes": "v1", "a": "v1"})
    dest = tmp_path / "raw"
    assert download(archive, dest) == 0
    (dest / "PASTIS" / "mine.txt").write_text("the user's")
    archive.unlink()
    archive_of(pastis_tree, archive, {"notes": "v2", "a": "v1", "b": "new"})
    assert download(archive, dest) == 0
    assert (dest / "notes").read_text() == "v2" and (dest / "b").read_text() == "new"
    assert (dest / "PASTIS" / "mine.txt").read_text() == "the user's"

    (dest / "notes").write_text("edited by the user")
    archive.unlink()
    archive_of(pastis_tree, archive, {"notes": "v3"})
    before = snapshot(dest)
    with caplog.at_level(logging.ERROR):
        assert download(archive, dest) == 1
    assert f"-> {dest / 'notes'}: the existing file differs" in error_of(caplog)
    assert snapshot(dest) == before


# --------------------------------------------------------------------------------------------
# §8: the plug-in encoder contract is checked once, with one clear line per violation

#: what a test encoder's forward pass makes of its 4 good levels (each (2, 8, 8, 8) here)
Break = Callable[[list[torch.Tensor]], object]
#: the dummy batch of the test models: 2 frames of the 10 PASTIS bands at the policy's 32 px
DUMMY = (2, 10, 32, 32)


class ConvEncoder(nn.Module):
    """A 4-level conv encoder (stride 4, 8 channels) honouring the contract, unless ``broken``
    rewrites its levels."""

    out_dims = (8, 8, 8, 8)

    def __init__(self, broken: Break | None = None) -> None:
        super().__init__()
        self.broken = broken
        self.stem = nn.Conv2d(10, 8, 4, stride=4)
        self.norm = nn.BatchNorm2d(8)
        self.levels = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(4))

    def truncate(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> object:
        torch.rand(1)  # draws: the check must leave the global random state as it was
        h, out = self.norm(self.stem(x)), []
        for conv in self.levels:
            h = torch.relu(conv(h))
            out.append(h)
        return out if self.broken is None else self.broken(out)


def _raise(levels: list[torch.Tensor]) -> object:
    raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\n(16x8 and 4x4)")


def _pyramid(levels: list[torch.Tensor]) -> list[torch.Tensor]:
    return [F.avg_pool2d(level, 2**i) for i, level in enumerate(levels)]


def _several(levels: list[torch.Tensor]) -> list[torch.Tensor]:
    """Three levels, the first float64, the second of 16 channels, the third halved."""
    return [levels[0].double(), torch.cat([levels[1]] * 2, 1), F.avg_pool2d(levels[2], 2)]


ENCODER = f"{__name__}:ConvEncoder"
BROKEN: dict[str, tuple[Break, list[str]]] = {
    "3 levels for 4 out_dims": (
        lambda lv: lv[:3],
        ["forward returned 3 level(s), out_dims and the decoder need 4"],
    ),
    "5 levels": (lambda lv: [*lv, lv[0]], ["forward returned 5 level(s)"]),
    "wrong channels": (
        lambda lv: [*lv[:2], torch.cat([lv[2]] * 2, 1), lv[3]],
        ["level 2 has 16 channels, out_dims[2] is 8"],
    ),
    "wrong batch": (
        lambda lv: [lv[0], lv[1][:1], *lv[2:]],
        ["level 1 has 1 frame(s) for the 2 given: batch and time dimensions must be kept"],
    ),
    "frames averaged away": (
        lambda lv: [level.mean(0, keepdim=True) for level in lv],
        [f"level {i} has 1 frame(s) for the 2 given" for i in range(4)],
    ),
    "tokens not folded back (time/space dim dropped)": (
        lambda lv: [level.flatten(2) for level in lv],
        [f"level {i} has shape (2, 8, 64), not 4 dimensions" for i in range(4)],
    ),
    "batch and time split": (
        lambda lv: [*lv[:3], lv[3].unflatten(0, (1, 2))],
        ["level 3 has shape (1, 2, 8, 8, 8), not 4 dimensions (frames, channels, h, w)"],
    ),
    "float64 levels": (
        lambda lv: [level.double() for level in lv],
        [f"level {i} is float64, not one of float32, float16, bfloat16" for i in range(4)],
    ),
    "int64 level": (
        lambda lv: [lv[0], lv[1].long(), *lv[2:]],
        ["level 1 is int64, not one of float32, float16, bfloat16"],
    ),
    "mixed resolution (a pyramid)": (
        _pyramid,
        ["levels of mixed resolution (level 0 8 x 8, level 1 4 x 4, level 2 2 x 2, level 3 1 x 1)"],
    ),
    "levels too small for the neck": (
        lambda lv: [F.adaptive_avg_pool2d(level, 1) for level in lv],
        ["levels of 1 x 1: at least 2 x 2 needed (the neck halves them)"],
    ),
    "one stacked tensor instead of a list": (
        torch.stack,
        ["forward must return a list of 4 maps, got a Tensor"],
    ),
    "a level that is not a tensor": (
        lambda lv: [*lv[:2], lv[2].numpy(), lv[3]],
        ["level 2 is a ndarray, not a tensor"],
    ),
    "forward raises": (
        _raise,
        [
            f"forward on a dummy batch {DUMMY} raised RuntimeError: mat1 and mat2 shapes cannot "
            "be multiplied (16x8 and 4x4)"
        ],
    ),
    "several violations at once": (
        _several,
        [
            "forward returned 3 level(s)",
            "level 0 is float64",
            "level 1 has 16 channels, out_dims[1] is 8",
            "levels of mixed resolution (level 0 8 x 8, level 1 8 x 8, level 2 4 x 4)",
        ],
    ),
}


@pytest.fixture
def unregister() -> Iterator[None]:
    """Remove the models (and checkpoints) a test registers."""
    before = set(registry.REGISTRY), set(catalog.CHECKPOINTS)
    yield
    for name in set(registry.REGISTRY) - before[0]:
        del registry.REGISTRY[name], catalog.MODELS[name]
    for name in set(catalog.CHECKPOINTS) - before[1]:
        del catalog.CHECKPOINTS[name]


def register(name: str, build: Callable[[], nn.Module], **kwargs: object) -> None:
    """A test model at 32 px (the dummy batch (2, 10, 32, 32)) with the tiny decoder."""
    policy = InputPolicy("native", 32)
    kwargs = {"decoder_channels": 16, "ltae_heads": 4} | kwargs
    register_model(name, family="Test", policy=policy, build_encoder=build, **kwargs)


def contract_lines(err: pytest.ExceptionInfo, model: str, encoder: str = ENCODER) -> list[str]:
    """The violation lines of a contract error, after checking its first line names the model
    and the encoder's module:class and counts the lines."""
    first, *lines = str(err.value).splitlines()
    assert first == (
        f"model {model!r}: encoder {encoder} breaks the encoder contract "
        f"(docs/add-an-encoder.md) in {len(lines)} way(s):"
    )
    return [line.strip() for line in lines]


@pytest.mark.parametrize(("broken", "expected"), BROKEN.values(), ids=BROKEN)
def test_encoder_breaking_the_contract_is_refused_when_built(
    unregister: None, broken: Break, expected: list[str]
) -> None:
    register("broken_enc", partial(ConvEncoder, broken))
    with pytest.raises(EncoderContractError) as err:
        build_model("broken_enc", encoder_trainable=False)
    lines = contract_lines(err, "broken_enc")
    assert len(lines) == len(expected)  # one line per violation, none twice
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(start), (line, start)


class ThreeDims(ConvEncoder):
    out_dims = (8, 8, 8)


class OddChannels(ConvEncoder):
    out_dims = (6, 6, 6, 6)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(10, 6, 4, stride=4)
        self.norm = nn.BatchNorm2d(6)
        self.levels = nn.ModuleList(nn.Conv2d(6, 6, 3, padding=1) for _ in range(4))


class NoTruncate(nn.Module):
    out_dims = (8, 8, 8, 8)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x[:, :8, ::4, ::4]] * 4


class TruncatesTooMuch(ConvEncoder):
    def truncate(self) -> None:
        self.broken = lambda levels: levels[:2]


DECLARED = {
    "3 out_dims": (
        ThreeDims,
        {},
        ["out_dims must list 4 equal positive channel counts (one per output level), got "
         "(8, 8, 8)"],
    ),
    "channels not divisible by ltae_heads": (
        OddChannels, {}, ["out_dims channels 6 are not divisible by the decoder's ltae_heads 4"]
    ),
    "no truncate()": (
        NoTruncate, {}, ["no method truncate()"]
    ),
    "checkpoint without load_encoder_state()": (
        ConvEncoder, {"checkpoint": catalog.CROMA_BASE}, ["no method load_encoder_state()"]
    ),
    "truncate() that drops levels": (
        TruncatesTooMuch, {}, ["forward returned 2 level(s), out_dims and the decoder need 4"]
    ),
}  # fmt: skip


@pytest.mark.parametrize(("cls", "kwargs", "expected"), DECLARED.values(), ids=DECLARED)
def test_what_the_encoder_declares_is_checked(
    unregister: None, cls: type, kwargs: dict, expected: list[str]
) -> None:
    register("declared_enc", cls, **kwargs)
    with pytest.raises(EncoderContractError) as err:
        build_model("declared_enc")
    assert contract_lines(err, "declared_enc", f"{__name__}:{cls.__qualname__}") == expected


def test_encoder_meeting_the_contract_builds_and_the_check_changes_nothing(
    unregister: None,
) -> None:
    """A conforming plug-in builds and trains; the check draws no random number and leaves
    training flags and BatchNorm statistics as they were."""
    register("good_enc", ConvEncoder)
    model = build_model("good_enc")
    assert model(torch.randn(2, 3, 10, 32, 32)).shape == (2, 20, 32, 32)

    encoder, spec = ConvEncoder(), registry.get_spec("good_enc")
    encoder.levels[1].eval()  # a flag of its own, kept
    flags = [m.training for m in encoder.modules()]
    rng, stats = torch.get_rng_state(), encoder.norm.running_mean.clone()
    check_output(encoder, spec)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in encoder.modules()] == flags
    assert torch.equal(encoder.norm.running_mean, stats)


def test_level_dtypes_are_what_the_feature_cache_stores() -> None:
    assert set(LEVEL_DTYPES) == set(STORED)


#: A plug-in module whose encoder returns float64 levels (``KeyError: torch.float64`` from the
#: feature cache of a frozen encoder before) or, as ``mixed_plugin``, a pyramid (exit 0 before).
PLUGIN = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    from gfmtune.models.policies import InputPolicy
    from gfmtune.models.registry import register_model


    class Float64Encoder(nn.Module):
        out_dims = (8, 8, 8, 8)

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(10, 8, 4, stride=4)

        def truncate(self):
            pass

        def forward(self, x):
            h = self.stem(x)
            return [h.double()] * 4


    class PyramidEncoder(Float64Encoder):
        def forward(self, x):
            h = self.stem(x)
            return [F.avg_pool2d(h, 2**i) for i in range(4)]


    kw = {"family": "Bad", "policy": InputPolicy("native", 32), "decoder_channels": 16,
          "ltae_heads": 4}
    register_model("float64_plugin", build_encoder=Float64Encoder, **kw)
    register_model("mixed_plugin", build_encoder=PyramidEncoder, **kw)
    """
)

CLI_CASES = {
    "float64 levels, frozen": (
        "float64_plugin", "Float64Encoder", 0.0, [f"level {i} is float64" for i in range(4)]
    ),
    "mixed resolution, trained": (
        "mixed_plugin", "PyramidEncoder", 1.0, ["levels of mixed resolution (level 0 8 x 8"]
    ),
}  # fmt: skip


@pytest.mark.parametrize(("model", "cls", "ft_rate", "expected"), CLI_CASES.values(), ids=CLI_CASES)
def test_gfmtune_train_stops_before_reading_data(
    train_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    unregister: None,
    model: str,
    cls: str,
    ft_rate: float,
    expected: list[str],
) -> None:
    """``gfmtune train`` of a plug-in breaking the contract: exit 1, the error in the log and
    in ``failed.json``, no state or metrics, and not one patch read."""
    (tmp_path / "bad_plugin_mod.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(PLUGINS_ENV, "bad_plugin_mod")
    monkeypatch.delitem(sys.modules, "bad_plugin_mod", raising=False)

    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("data read before the encoder contract was checked")

    monkeypatch.setattr(job.CellJob, "_datasets", no_data)
    data = replace(inputs(train_data, "100", 1), feature_cache=tmp_path / "feature_cache")
    out = tmp_path / "cell"
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps(FAST.to_dict()))
    with caplog.at_level(logging.ERROR):
        code = main(train_argv(data, Cell(model, ft_rate, "100", 1), settings, out))
    assert code == 1
    message = error_of(caplog)
    assert message.startswith(f"model {model!r}: encoder bad_plugin_mod:{cls} breaks the encoder")
    for line in expected:
        assert f"\n  {line}" in message
    assert json.loads((out / "failed.json").read_text())["error"] == message
    left = {p.name for p in out.iterdir()}
    assert "failed.json" in left and not left & {
        cell_state.STATE,
        cell_state.BEST,
        cell_state.METRICS,
    }
    assert not [p for p in out.iterdir() if p.is_dir()]  # no board, no partial files
    assert not (tmp_path / "feature_cache").exists()
    monkeypatch.delitem(sys.modules, "bad_plugin_mod", raising=False)
