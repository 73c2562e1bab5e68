"""Fault matrix, second round (issue 19 §3, §4, §6): feature caches keyed by the encoder's code,
one writer per cell folder and per store, complete caches read on a read-only file system, and a
full disk named by path while building a cache or saving a checkpoint; and (issue 20 §2) GPU lock
files shared by every user's jobs.

Each case checks the exit code (or the key), a message naming the folder, store or file (and the
process holding it), and that no output a rerun would trust is left: the rerun then ends as an
uninterrupted run.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import io
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from gfmtune.cli import main
from gfmtune.data.inventory import write_inventory
from gfmtune.data.store import lock_path, partial_path, progress_path
from gfmtune.data.synthetic import SyntheticSpec, write_synthetic_pastis
from gfmtune.models import catalog, registry
from gfmtune.models.registry import build_model, get_spec
from gfmtune.train import devices, feature_key
from gfmtune.train.cell_state import LOCK
from gfmtune.train.feature_key import cache_key
from gfmtune.train.job import Cell
from tests.data.test_store import SLOW_CONVERT, assert_store_equals_source
from tests.faults.test_train_faults import (
    DINO,
    SETTINGS,
    UTAE,
    cache_copy,
    cli_train,
    dino_inputs,
    error_line,
    metrics,
    same_result,
    utae_inputs,
    warned,
)
from tests.faults.test_train_faults import reference as reference  # the fixture
from tests.models.test_plugin_encoder import PLUGIN
from tests.train.conftest import SLOW_TRAIN, kill_mid_training, train_argv
from tests.train.conftest import train_data as train_data  # the fixture, for this module
from tests.train.test_devices import claim, umask
from tests.train.test_devices import current as current  # the fixtures
from tests.train.test_devices import lock_folder as lock_folder

#: Holds the lock file argv[1] (gfmtune.lockfile) until killed, saying "held" once it does.
HOLD = """
import sys, time
from gfmtune.lockfile import held
with held(sys.argv[1], "a test"):
    print("held", flush=True)
    time.sleep(600)
"""


def wait_for(ready: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def start_holder(lock: Path) -> subprocess.Popen:
    """A process holding ``lock`` (returned once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
    return proc


@contextmanager
def holding(lock: Path) -> Iterator[subprocess.Popen]:
    """Another process holds ``lock`` inside the block."""
    proc = start_holder(lock)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def killed_holder(lock: Path) -> int:
    """The pid of a process SIGKILLed while holding ``lock`` (its lock file still names it)."""
    proc = start_holder(lock)
    proc.kill()
    proc.wait()
    return proc.pid


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder``: its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def settings_file(tmp_path: Path) -> Path:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(SETTINGS.to_dict()))
    return path


# §3: the feature-cache key covers the encoder's code ------------------------------------------


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Install (again) the plug-in module ``conv_plugin_mod`` with the given source, as a new
    process would import it; its models are unregistered afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GFMTUNE_PLUGINS", "conv_plugin_mod")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    before = set(registry.REGISTRY)

    def unregister() -> None:
        sys.modules.pop("conv_plugin_mod", None)
        for name in set(registry.REGISTRY) - before:
            del registry.REGISTRY[name], catalog.MODELS[name]

    def install(source: str) -> None:
        unregister()
        (tmp_path / "conv_plugin_mod.py").write_text(source)
        __import__("conv_plugin_mod")

    yield install
    unregister()


def key_of(name: str, timesteps: Path) -> str:
    """The feature-cache key of model ``name`` (weights drawn from seed 0) on fixed data."""
    torch.manual_seed(0)
    model = build_model(name, encoder_trainable=False)
    return cache_key(get_spec(name), model, "digest", timesteps, "dataset", "zero", None)


def edited_copy(module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: bool) -> None:
    """Point the shipped module ``module`` at a copy of its file (with a line added: ``edit``),
    as an edited installation would be read."""
    loaded = sys.modules[module]
    copy = tmp_path / "edited" / Path(loaded.__file__).name
    copy.parent.mkdir(exist_ok=True)
    copy.write_text(Path(loaded.__file__).read_text() + ("\nEDITED = True\n" if edit else ""))
    monkeypatch.setattr(loaded, "__file__", str(copy))


ZEROED = PLUGIN.replace("out.append(h)", "out.append(h * 0)")  # the broken forward()
KEY_CHANGES = {  # case -> (model, change made between two keys, whether the key must change)
    "plug-in forward edited": ("conv_plugin", lambda c: c.plugins(ZEROED), True),
    "plug-in re-imported as it was": ("conv_plugin", lambda c: c.plugins(PLUGIN), False),
    "shipped encoder module edited": (
        "dino_tiny", lambda c: c.copy("gfmtune.models.dino", True), True),
    "shipped encoder module as it was": (
        "dino_tiny", lambda c: c.copy("gfmtune.models.dino", False), False),
    "model's encode module edited": (
        "dino_tiny", lambda c: c.copy("gfmtune.models.upernet", True), True),
    "input policy module edited": (
        "dino_tiny", lambda c: c.copy("gfmtune.models.policies", True), True),
    "plug-in's policy module edited": (
        "conv_plugin", lambda c: c.copy("gfmtune.models.policies", True), True),
    "gfmtune version": (
        "dino_tiny", lambda c: c.mp.setattr(feature_key, "package_version", lambda: "9"), True),
    "unrelated module edited": (
        "dino_tiny", lambda c: c.copy("gfmtune.train.job", True), False),
}  # fmt: skip


class KeyCase:
    """What a :data:`KEY_CHANGES` change acts on."""

    def __init__(self, plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.plugins, self.tmp, self.mp = plugins, tmp_path, monkeypatch

    def copy(self, module: str, edit: bool) -> None:
        edited_copy(module, self.tmp, self.mp, edit)


@pytest.mark.parametrize("case", KEY_CHANGES, ids=list(KEY_CHANGES))
def test_cache_key_follows_the_encoders_code(
    case: str, plugins, train_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, change, changes = KEY_CHANGES[case]
    plugins(PLUGIN)
    timesteps = train_data / "timesteps" / "1.csv"
    before = key_of(model, timesteps)
    assert key_of(model, timesteps) == before  # the same code and weights: the same key
    change(KeyCase(plugins, tmp_path, monkeypatch))
    assert (key_of(model, timesteps) != before) is changes


def test_fixed_plugin_forward_trains_from_new_features(
    plugins, train_data: Path, tmp_path: Path, caplog
) -> None:
    """The issue's case: a forward() that zeroes its levels, fixed, then the cell retrained."""
    cell, root = Cell("conv_plugin", 0.0, "100", 1), tmp_path / "cache"
    plugins(ZEROED)
    assert cli_train(dino_inputs(train_data, root), cell, tmp_path / "zeroed") == 0
    plugins(PLUGIN)
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert cli_train(dino_inputs(train_data, root), cell, tmp_path / "fixed") == 0
    assert "training from cached encoder features" in caplog.text
    assert len([p for p in root.iterdir() if p.is_dir()]) == 2  # a cache per forward()
    assert cli_train(dino_inputs(train_data, None), cell, tmp_path / "plain") == 0
    fixed, plain = metrics(tmp_path / "fixed"), metrics(tmp_path / "plain")
    assert fixed["test"]["miou"] == pytest.approx(plain["test"]["miou"], rel=1e-5)


# §4: one writer per cell folder ---------------------------------------------------------------


def start_training(train_data: Path, tmp_path: Path, out: Path) -> subprocess.Popen:
    """``gfmtune train`` of the U-TAE cell into ``out`` (epochs slowed by 1 s), returned once it
    holds the folder's lock."""
    argv = train_argv(utae_inputs(train_data), UTAE, settings_file(tmp_path), out)
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, *argv])
    lock = out / LOCK
    wait_for(lambda: lock.exists() and lock.read_text().strip(), "the job to lock its folder")
    return proc


@pytest.mark.parametrize("holder", ["training job", "other process"])
def test_second_train_on_a_held_cell_folder_refuses(
    holder: str, train_data: Path, reference: dict, tmp_path: Path, caplog
) -> None:
    out = tmp_path / "cell"
    if holder == "training job":
        proc = start_training(train_data, tmp_path, out)
    else:
        out.mkdir()
        shutil.copy(reference["utae"] / "best.pt", out / "best.pt")  # the holder's file
        proc = start_holder(out / LOCK)
    before = files_of(out) if holder == "other process" else None
    try:
        assert cli_train(utae_inputs(train_data), UTAE, out) == 1
        line = error_line(caplog)
        assert f"cell folder {out} is in use by pid {proc.pid} on host" in line
        assert "wait for it to finish" in line and not (out / "metrics.json").exists()
        if before is not None:
            assert files_of(out) == before  # nothing of the holder's touched
    finally:
        if holder == "other process":
            proc.kill()
    assert proc.wait(timeout=120) == (0 if holder == "training job" else -9)
    if holder == "training job":  # the first job ends as if alone
        assert same_result(metrics(out), metrics(reference["utae"]))


def left_lock(case: str, train_data: Path, tmp_path: Path, out: Path) -> tuple[str, ...]:
    """Leave the cell folder ``out`` with the lock file of ``case``; the words of the warning
    on taking it over (none: no warning)."""
    out.mkdir()
    lock = out / LOCK
    if case == "killed holder":
        return str(lock), f"taken over from dead pid {killed_holder(lock)}"
    if case == "killed training job":
        argv = train_argv(utae_inputs(train_data), UTAE, settings_file(tmp_path), out)
        kill_mid_training(argv, out)
        pid = lock.read_text().split()[0]
        return str(lock), f"taken over from dead pid {pid}"
    if case == "holder on another host":
        lock.write_text(f"4242 not-{socket.gethostname()}\n")
        return str(lock), "from pid 4242 on host not-", "which no longer holds it"
    lock.write_text("")  # released by a job that ended
    return ()


@pytest.mark.parametrize(
    "case", ["killed holder", "killed training job", "holder on another host", "released"]
)
def test_lock_left_by_a_dead_job_is_taken_over(
    case: str, train_data: Path, reference: dict, tmp_path: Path, caplog
) -> None:
    out = tmp_path / "cell"
    words = left_lock(case, train_data, tmp_path, out)
    caplog.clear()
    assert cli_train(utae_inputs(train_data), UTAE, out) == 0
    assert warned(caplog, *words) if words else not warned(caplog, "taken over")
    assert same_result(metrics(out), metrics(reference["utae"]))
    assert (out / LOCK).read_text() == ""  # released: it names no holder


# §4: one converter per store ------------------------------------------------------------------


def cli_convert(root: Path, store: Path) -> int:
    """``gfmtune store`` of ``root`` into ``store``; its exit code."""
    inventory = store.parent / f"{store.name}.inventory.json"
    write_inventory(inventory, "local", root)
    return main(["store", "--inventory", str(inventory), "--out", str(store), "--no-progress"])


def start_converting(root: Path, store: Path, patches: int) -> subprocess.Popen:
    """A conversion of ``root`` into ``store`` (0.15 s per patch), returned once ``patches``
    patches are written."""
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CONVERT, str(root), str(store)])
    log = progress_path(store)
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) > patches, "patches")
    return proc


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return write_synthetic_pastis(tmp_path / "raw", SyntheticSpec(16, 16, (6, 11), seed=2))


def test_second_conversion_into_a_store_being_converted_stops(
    raw: Path, tmp_path: Path, caplog
) -> None:
    store = tmp_path / "s2.zarr"
    proc = start_converting(raw, store, 2)
    try:
        assert cli_convert(raw, store) == 1
        line = error_line(caplog)
        assert f"store {store} is in use by pid {proc.pid} on host" in line
        assert str(lock_path(store)) in line
        assert partial_path(store).is_dir() and progress_path(store).exists()  # left alone
    finally:
        code = proc.wait(timeout=120)
    assert code == 0  # the first conversion ends as if alone
    assert_store_equals_source(store, raw)


def test_conversion_of_a_held_store_leaves_its_finished_store(
    raw: Path, tiny_store: Path, tmp_path: Path, caplog
) -> None:
    store = tmp_path / "s2.zarr"
    shutil.copytree(tiny_store, store)  # finished by the lock's holder
    before = files_of(store)
    with holding(lock_path(store)) as proc:
        assert cli_convert(raw, store) == 1
    assert f"store {store} is in use by pid {proc.pid}" in error_line(caplog)
    assert files_of(store) == before and not partial_path(store).exists()


def test_lock_of_a_killed_conversion_is_taken_over(raw: Path, tmp_path: Path, caplog) -> None:
    store = tmp_path / "s2.zarr"
    caplog.set_level(logging.INFO)
    proc = start_converting(raw, store, 3)
    proc.kill()
    proc.wait()
    assert cli_convert(raw, store) == 0
    assert warned(caplog, str(lock_path(store)), f"taken over from dead pid {proc.pid}")
    assert "resuming" in caplog.text and lock_path(store).read_text() == ""
    assert_store_equals_source(store, raw)


def no_flock(monkeypatch: pytest.MonkeyPatch) -> None:
    """``flock`` failing as on a file system without it (Lustre mounted without ``flock``)."""

    def flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(fcntl, "flock", flock)


@pytest.mark.parametrize("target", ["cell folder", "store"])
def test_file_system_without_flock_names_the_lock(
    target: str, train_data: Path, raw: Path, tmp_path: Path, monkeypatch, caplog
) -> None:
    out, store = tmp_path / "cell", tmp_path / "s2.zarr"
    no_flock(monkeypatch)
    if target == "cell folder":
        assert cli_train(utae_inputs(train_data), UTAE, out) == 1
        lock, left = out / LOCK, [out / "metrics.json", out / "state.pt"]
    else:
        assert cli_convert(raw, store) == 1
        lock, left = lock_path(store), [store, partial_path(store), progress_path(store)]
    line = error_line(caplog)
    where = out if target == "cell folder" else store
    assert f"{lock}: cannot lock {target} {where} (Function not implemented)" in line
    assert "may not support flock" in line and not any(p.exists() for p in left)


# §4: a complete feature cache is read without its lock ----------------------------------------


def read_only(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``root`` behave as a read-only file system: modes without write permission (which
    root ignores), and every write, creation, rename or removal under it failing with EROFS."""
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)

    def under(path) -> bool:
        return isinstance(path, str | os.PathLike) and Path(path).absolute().is_relative_to(root)

    def refuse(path) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    def guard(call: Callable, writes: Callable[..., bool]) -> Callable:
        def guarded(path, *args, **kwargs):
            if under(path) and writes(path, *args, **kwargs):
                refuse(path)
            return call(path, *args, **kwargs)

        return guarded

    def opens_to_write(path, flags_or_mode="r", *args, **kwargs) -> bool:
        if isinstance(flags_or_mode, int):
            return bool(flags_or_mode & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
        return any(c in flags_or_mode for c in "wax+")

    def creates(path, *args, **kwargs) -> bool:
        if Path(path).exists():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
        return True

    always = lambda *args, **kwargs: True  # noqa: E731
    monkeypatch.setattr(os, "open", guard(os.open, opens_to_write))
    monkeypatch.setattr(builtins, "open", guard(builtins.open, opens_to_write))
    monkeypatch.setattr(io, "open", guard(io.open, opens_to_write))
    monkeypatch.setattr(os, "mkdir", guard(os.mkdir, creates))
    for name in ("replace", "rename", "unlink", "rmdir"):
        monkeypatch.setattr(os, name, guard(getattr(os, name), always))


@pytest.fixture
def restore_modes(tmp_path: Path) -> Iterator[None]:
    """Give write permission back under ``tmp_path`` afterwards (for its cleanup)."""
    yield
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)


@pytest.mark.parametrize("case", ["complete", "complete with its builder's lock", "partial"])
def test_feature_cache_on_a_read_only_file_system(
    case: str, train_data: Path, reference: dict, tmp_path: Path, monkeypatch, caplog,
    restore_modes: None,
) -> None:  # fmt: skip
    root, _ = cache_copy(reference, tmp_path)
    folder = root / reference["cache"].name
    if case == "complete with its builder's lock":
        folder.with_suffix(".lock").write_text("")
    if case == "partial":  # a build stopped before it was complete
        (folder / "complete.json").unlink()
        folder = folder.rename(folder.with_name(f"{folder.name}.partial"))
    before = files_of(root)
    read_only(root, monkeypatch)
    out = tmp_path / "cell"
    code = cli_train(dino_inputs(train_data, root), DINO, out)
    monkeypatch.undo()
    assert files_of(root) == before  # nothing written, created or removed there
    if case == "partial":
        assert code == 1
        line = error_line(caplog)
        assert f"{root / reference['cache'].name}.lock: cannot write the lock" in line
        assert "Read-only file system" in line and not (out / "metrics.json").exists()
        return
    assert code == 0
    assert same_result(metrics(out), metrics(reference["dino"]))


# §6: a full disk names the path ---------------------------------------------------------------


def fallocate_fails(monkeypatch: pytest.MonkeyPatch, at_call: int, code: int) -> None:
    """``os.posix_fallocate`` raising ``code`` from its ``at_call``-th call on."""
    allocate, calls = os.posix_fallocate, []

    def fallocate(fd: int, offset: int, size: int) -> None:
        calls.append(fd)
        if len(calls) >= at_call:
            raise OSError(code, os.strerror(code))
        allocate(fd, offset, size)

    monkeypatch.setattr(os, "posix_fallocate", fallocate)


def little_free_space(monkeypatch: pytest.MonkeyPatch, short: Callable[[Path], bool]) -> None:
    """1000 bytes free for the paths ``short`` holds true of."""
    from gfmtune import fileio

    free = fileio.free_bytes
    monkeypatch.setattr(fileio, "free_bytes", lambda p: 1000 if short(Path(p)) else free(p))


CACHE_DISK_FULL = {  # case -> (fallocate's failing call, errno, level named, resumed build)
    "first level": (1, errno.ENOSPC, 0, False),
    "third level": (3, errno.ENOSPC, 2, False),
    "resumed build": (1, errno.ENOSPC, 0, True),
    "no fallocate, space checked": (1, errno.EOPNOTSUPP, 0, False),
}


@pytest.mark.parametrize("case", CACHE_DISK_FULL, ids=list(CACHE_DISK_FULL))
def test_feature_cache_build_on_a_full_disk(
    case: str, train_data: Path, reference: dict, tmp_path: Path, monkeypatch, caplog
) -> None:
    at_call, code, level, resumed = CACHE_DISK_FULL[case]
    root, key, done_rows = tmp_path / "cache", reference["cache"].name, 0
    if resumed:  # a build killed with half of its rows done
        cache_copy(reference, tmp_path)
        (root / key / "complete.json").unlink()
        marks = root / key / "done.bin"
        done = marks.read_bytes()
        marks.write_bytes(bytes(len(done) // 2) + done[len(done) // 2 :])
        done_rows = len(done) - len(done) // 2
        (root / key).rename(root / f"{key}.partial")
    fallocate_fails(monkeypatch, at_call, code)
    if code == errno.EOPNOTSUPP:
        little_free_space(monkeypatch, lambda p: p.is_relative_to(root))
    data, out = dino_inputs(train_data, root), tmp_path / "cell"
    assert cli_train(data, DINO, out) == 1
    line = error_line(caplog)
    named = root / f"{key}.partial" / f"level{level}.npy"
    assert line.startswith(f"disk full while writing {named}: ") and "bytes needed" in line
    assert not (root / key).exists() and not (out / "metrics.json").exists()  # nothing trusted

    monkeypatch.undo()
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert cli_train(data, DINO, out) == 0  # the rerun builds it and trains as if never stopped
    assert f"resuming, {done_rows} of " in caplog.text  # the rows done before, no others
    assert same_result(metrics(out), metrics(reference["dino"]))


INLINE = "[enforce fail at inline_container.cc:672] . unexpected pos 331264 vs 331160"


def save_fails_midway(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """``torch.save`` into ``name``'s temporary file writes part of it, then fails as torch's
    zip writer does on a full disk."""
    save = torch.save

    def failing(obj, f, *args, **kwargs) -> None:
        if Path(f).name == f".{name}.tmp":
            Path(f).write_bytes(b"PK\x03\x04 part of a zip")
            raise RuntimeError(INLINE)
        save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing)


@pytest.mark.parametrize("mode", ["space checked first", "torch.save fails midway"])
@pytest.mark.parametrize("name", ["best.pt", "state.pt"])
def test_checkpoint_save_on_a_full_disk(
    name: str, mode: str, train_data: Path, reference: dict, tmp_path: Path, monkeypatch, caplog
) -> None:
    out = tmp_path / "cell"
    target = out / name
    if mode == "space checked first":
        little_free_space(monkeypatch, lambda p: p == target)
    else:
        save_fails_midway(monkeypatch, name)
    assert cli_train(utae_inputs(train_data), UTAE, out) == 1
    line = error_line(caplog)
    assert line.startswith(f"disk full while writing {target}: ") and "bytes needed" in line
    assert "1000 bytes free" in line if mode == "space checked first" else INLINE in line
    assert not target.exists() and not (out / f".{name}.tmp").exists()
    assert not (out / "metrics.json").exists()

    monkeypatch.undo()
    assert cli_train(utae_inputs(train_data), UTAE, out) == 0
    assert same_result(metrics(out), metrics(reference["utae"]))


# issue 20 §2: GPU lock files shared by every user's jobs --------------------------------------


def test_a_lock_file_this_user_may_not_open_is_named(
    lock_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock_folder.mkdir(parents=True)
    (lock_folder / "gpu0.lock").touch(mode=0o644)
    real_open = os.open

    def refused(path, flags, *args):  # as for another user's file, even when run as root
        if Path(path).name == "gpu0.lock":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refused)
    found = r"cannot open \S+/gpu0.lock \(owner uid \d+, mode 0644\): .*chmod 0666 it"
    with pytest.raises(PermissionError, match=found + ".*GFMTUNE_GPU_LOCK_DIR"):
        claim(devices.claimed_device())


@contextmanager
def acting_as(uid: int) -> Iterator[None]:
    """This process's file accesses made as user ``uid`` (root only)."""
    os.setegid(uid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")
def test_another_users_job_claims_gpus_in_the_shared_folder(
    current: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    nobody = 65534
    base = Path(tempfile.mkdtemp())
    try:
        base.chmod(0o755)  # every user reaches it, as /tmp
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.setenv(devices.LOCK_DIR_ENV, str(base / "locks"))
        with devices.claimed_device():  # root's job makes the folder and gpu0.lock
            pass
        (base / "locks" / "gpu1.lock").touch(mode=0o644)  # root's, by an older gfmtune
        with umask(0o077), acting_as(nobody), devices.claimed_device() as device:
            assert device.index == 0  # root's gpu0.lock
            with pytest.raises(PermissionError, match=r"gpu1.lock \(owner uid 0, mode 0644\)"):
                claim(devices.claimed_device())
        (base / "locks" / "gpu1.lock").unlink()
        with umask(0o077), acting_as(nobody), devices.claimed_device() as a:
            assert claim(devices.claimed_device()).index == 1  # gpu1.lock made by nobody
        made = (base / "locks" / "gpu1.lock").stat()
        assert (made.st_uid, stat.S_IMODE(made.st_mode)) == (nobody, 0o666)
        with devices.claimed_device() as a, devices.claimed_device() as b:  # root again
            assert (a.index, b.index) == (0, 1)
    finally:
        shutil.rmtree(base)
