"""``gfmtune gpu-wheels --dest .whl``: the wheels a bare, offline GPU machine needs to run
``gfmtune gpu-check``, fetched beforehand on a machine with internet.

The GPU machines this project is measured on come with Python 3.12, torch, timm, xarray, pandas
and the rest of :data:`GPU_IMAGE`, but not zarr and jsonschema with their dependencies
(:data:`WHEELS`). This downloads one manylinux x86_64 CPython 3.12 wheel of each, ``--no-deps``,
at the version installed here (so the GPU runs the code CI tested), into ``--dest``; there they
are installed with ``pip install --no-index --no-deps --target`` (docs/performance.md).
"""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
from importlib import metadata, resources
from pathlib import Path

log = logging.getLogger(__name__)

#: Distributions gfmtune imports that the GPU image lacks.
WHEELS = (
    "zarr", "numcodecs", "google-crc32c", "donfig", "jsonschema", "jsonschema-specifications",
    "referencing", "rpds-py", "rasterio", "affine",  # rasterio: the store's CRS (about 25 MB)
)  # fmt: skip
#: Python distributions of the GPU machines' image (``resources/gpu_image.txt``); a test
#: checks that a dry check imports nothing beyond them and :data:`WHEELS`.
GPU_IMAGE = frozenset(
    line.strip()
    for line in resources.files("gfmtune.resources")
    .joinpath("gpu_image.txt")
    .read_text()
    .splitlines()
    if line.strip() and not line.startswith("#")
)
PYTHON = "3.12"
#: manylinux tags pip matches exactly; newest first.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def download_command(name: str, version: str, dest: Path) -> list[str]:
    """``pip download`` of one wheel of ``name==version`` for the GPU machine."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--python-version", PYTHON, "--implementation", "cp", *platforms,
            "-d", str(dest), f"{name}=={version}"]  # fmt: skip


def wheel_names(dest: Path) -> dict[str, list[Path]]:
    """The wheels in ``dest`` by canonical distribution name."""
    found: dict[str, list[Path]] = {}
    for wheel in sorted(dest.glob("*.whl")):
        found.setdefault(canonical(wheel.name.split("-")[0]), []).append(wheel)
    return found


def check_dest(dest: Path) -> None:
    """Exactly one wheel of each of :data:`WHEELS` in ``dest`` (two versions of one stop the
    whole install on the GPU machine)."""
    found = wheel_names(dest)
    missing = [n for n in WHEELS if canonical(n) not in found]
    doubled = {n: [p.name for p in ps] for n, ps in found.items() if len(ps) > 1}
    if missing or doubled:
        raise ValueError(f"{dest}: missing wheels {missing}, several versions of {doubled}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dest", type=Path, default=Path(".whl"), help="folder (default .whl)")


def run(args: argparse.Namespace) -> int:
    args.dest.mkdir(parents=True, exist_ok=True)
    for name in WHEELS:
        version = metadata.version(name)
        stale = [w for w in wheel_names(args.dest).get(canonical(name), [])
                 if f"-{version}-" not in w.name]  # fmt: skip
        for wheel in stale:
            log.info("removing %s (not the installed %s)", wheel.name, version)
            wheel.unlink()
        subprocess.run(download_command(name, version, args.dest), check=True)
    check_dest(args.dest)
    size = sum(w.stat().st_size for w in args.dest.glob("*.whl"))
    log.info("%d wheels, %.1f MB, in %s", len(WHEELS), size / 1e6, args.dest)
    return 0
