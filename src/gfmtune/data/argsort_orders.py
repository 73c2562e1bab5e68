"""Generate the argsort orders behind the ``paper`` label splits (``gfmtune argsort-orders``).

The authors' sampler (ShapingFT @040bd21, ``shapeft/utils/subset_sampler.py``) builds a
float64 array of Jensen-Shannon divergences that is +inf for every training patch and keeps
``np.argsort(distances)[:K]`` (default kind, ascending, no reversal). The order numpy gives equal
keys is an implementation detail of the numpy build and of the SIMD code it dispatches to. This
module installs each numpy build into a throw-away venv, runs that call for the 1,455 training
patches with every dispatched CPU feature enabled, without AVX-512 and without any
(``NPY_DISABLE_CPU_FEATURES``), and writes one ``<variant>.csv`` (``position``) per distinct
order with a ``<variant>.yaml`` provenance (runs, features, CPU, date, command).

A variant is named by the lowest CPU level that produced it (``identity`` if it is the fold
order); the AVX-512 order can only be produced on a CPU with AVX-512.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml

from gfmtune.data.manifests import (
    ARGSORT_COMMAND,
    ARGSORT_DIR,
    ARGSORT_VARIANTS,
    AVX512_CPU,
    PAPER_N_TRAIN,
    paper_size,
)
from gfmtune.fileio import atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_BUILDS = ("1.25.2", "1.26.4", "2.0.2", "2.1.3", "2.2.6", "2.3.5", "2.4.6")
#: CPU levels from lowest to highest; the non-identity variants are named after them
LEVELS = ("baseline", "avx2", "avx512")
PAPER_PERCENTS = (1, 10, 50)
AUTHORS_CALL = "np.argsort(np.array([np.float64(np.inf)] * n))"
SETTINGS_DOC = (
    "NPY_DISABLE_CPU_FEATURES per run: native = none; no-avx512 = the AVX-512 targets the build "
    "enabled; baseline = every dispatch target it enabled. A setting that would disable the "
    "same features as an earlier one is not run."
)

#: Run by each numpy build: its CPU features and the authors' call, as one JSON line.
PROBE = f"""
import json, sys
import numpy as np
try:
    from numpy._core import _multiarray_umath as core
except ImportError:  # numpy < 2
    from numpy.core import _multiarray_umath as core
n = int(sys.argv[1])
order = {AUTHORS_CALL}
print(json.dumps({{
    "numpy": np.__version__,
    "cpu_baseline": list(core.__cpu_baseline__),
    "enabled": [f for f in core.__cpu_dispatch__ if core.__cpu_features__.get(f)],
    "order": order.tolist(),
}}))
"""


def cpu_level(enabled: Sequence[str]) -> str:
    """The SIMD level of a numpy run from its enabled dispatch targets (1.x/2.x or 2.4 names)."""
    if any(f.startswith("AVX512") or f == "X86_V4" for f in enabled):
        return "avx512"
    if any(f in ("AVX2", "X86_V3") for f in enabled):
        return "avx2"
    return "baseline"


def disable_sets(enabled: Sequence[str]) -> dict[str, list[str]]:
    """``NPY_DISABLE_CPU_FEATURES`` per setting, from a build's natively enabled targets;
    settings that disable the same features as an earlier one are dropped."""
    settings = {
        "native": [],
        "no-avx512": [f for f in enabled if cpu_level([f]) == "avx512"],
        "baseline": list(enabled),
    }
    unique: dict[str, list[str]] = {}
    for name, disabled in settings.items():
        if disabled not in unique.values():
            unique[name] = disabled
    return unique


def parse_probe(stdout: str) -> dict:
    """The probe's JSON (its last output line; numpy may print warnings before it)."""
    lines = stdout.strip().splitlines()
    if not lines:
        raise RuntimeError("the numpy probe printed nothing")
    result = json.loads(lines[-1])
    missing = {"numpy", "cpu_baseline", "enabled", "order"} - set(result)
    if missing:
        raise RuntimeError(f"the numpy probe's output lacks {sorted(missing)}")
    return result


def run_probe(python: Path, disabled: Sequence[str], n: int = PAPER_N_TRAIN) -> dict:
    """Run :data:`PROBE` with ``python`` and the given CPU features disabled."""
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": " ".join(disabled)}
    done = subprocess.run(
        [str(python), "-c", PROBE, str(n)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(
            f"{python}: the numpy probe failed (NPY_DISABLE_CPU_FEATURES={' '.join(disabled)!r}):"
            f"\n{done.stderr.strip()}"
        )
    return parse_probe(done.stdout)


def install_numpy(version: str, root: Path) -> Path:
    """A throw-away venv under ``root`` with numpy ``version`` from the registry; its python."""
    venv = root / f"numpy-{version}"
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    wheel = ["--only-binary=:all:", f"numpy=={version}"]
    for step in ([sys.executable, "-m", "venv", str(venv)], [*pip, *wheel]):
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(step)} failed:\n{done.stderr.strip()}")
    return python


def probe_build(python: Path, n: int = PAPER_N_TRAIN) -> list[dict]:
    """One run per setting of :func:`disable_sets` for the numpy behind ``python``."""
    native = run_probe(python, [], n)
    runs = []
    for setting, disabled in disable_sets(native["enabled"]).items():
        result = native if not disabled else run_probe(python, disabled, n)
        runs.append({"numpy": result["numpy"], "setting": setting, "disabled": disabled} | result)
    return runs


def name_orders(runs: list[dict]) -> dict[str, dict]:
    """Distinct orders by variant name: ``identity`` for the fold order, else the lowest CPU
    level among the runs that produced it. Each value holds ``order`` and its ``runs``."""
    groups: dict[tuple[int, ...], list[dict]] = {}
    for run in runs:
        groups.setdefault(tuple(run["order"]), []).append(run)
    named: dict[str, dict] = {}
    for order, members in groups.items():
        if order == tuple(range(len(order))):
            name = "identity"
        else:
            name = min((cpu_level(r["enabled"]) for r in members), key=LEVELS.index)
        if name in named:
            raise RuntimeError(
                f"two different orders would both be named {name!r} (numpy "
                f"{_builds(named[name]['runs'])} and {_builds(members)}): the naming rule "
                "does not hold for these builds; inspect them before shipping either"
            )
        named[name] = {"order": list(order), "runs": members}
    return named


def _builds(runs: list[dict]) -> str:
    return ", ".join(f"{r['numpy']} {r['setting']}" for r in runs)


def cpu_model() -> tuple[str, bool]:
    """This machine's CPU model and whether it offers AVX-512 (Linux ``/proc/cpuinfo``)."""
    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.is_file() else ""
    fields = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in text.splitlines())
        if value
    )
    flags = fields.get("flags", "").split()
    return fields.get("model name", platform.processor()), "avx512f" in flags


def first_k_overlaps(order: Sequence[int]) -> dict[int, int]:
    """Per paper percent: how many of the first K positions are also the first K in fold order."""
    out = {}
    for percent in PAPER_PERCENTS:
        k = paper_size(len(order), percent)
        out[percent] = len(set(order[:k]) & set(range(k)))
    return out


def write_variants(named: dict[str, dict], out: Path, generated: dict) -> list[Path]:
    """``<variant>.csv`` and ``<variant>.yaml`` under ``out`` for every named order."""
    written = []
    for name, group in named.items():
        csv = Path(out) / f"{name}.csv"
        atomic_write_text(csv, pd.DataFrame({"position": group["order"]}).to_csv(index=False))
        provenance = {
            "variant": name,
            "description": ARGSORT_VARIANTS[name],
            "n": len(group["order"]),
            "call": AUTHORS_CALL,
            "source": "ShapingFT @040bd21 shapeft/utils/subset_sampler.py (balance_seg_indices)",
            "first_k_in_fold_order": first_k_overlaps(group["order"]),
            "generated": generated,
            "settings": SETTINGS_DOC,
            "runs": [_provenance_run(r) for r in group["runs"]],
        }
        meta = csv.with_suffix(".yaml")
        atomic_write_text(meta, yaml.safe_dump(provenance, sort_keys=False, width=100))
        written += [csv, meta]
    return written


def _provenance_run(run: dict) -> dict:
    """A run without its order; feature lists as ``NPY_DISABLE_CPU_FEATURES`` spells them."""
    features = ("disabled", "cpu_baseline", "enabled")
    return {k: " ".join(v) if k in features else v for k, v in run.items() if k != "order"}


def generate(builds: Sequence[str], out: Path, command: str) -> dict[str, dict]:
    """Install every numpy build, probe it, and write the distinct orders under ``out``."""
    model, avx512 = cpu_model()
    runs = []
    with tempfile.TemporaryDirectory(prefix="argsort-orders-") as tmp:
        for version in builds:
            log.info("numpy %s: installing into a throw-away venv", version)
            build_runs = probe_build(install_numpy(version, Path(tmp)))
            for run in build_runs:
                log.info(
                    "numpy %s %s: level %s", version, run["setting"], cpu_level(run["enabled"])
                )
            runs += build_runs
    named = name_orders(runs)
    generated = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "cpu_model": model,
        "cpu_avx512": avx512,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for path in write_variants(named, out, generated):
        log.info("wrote %s", path)
    if "avx512" not in named:
        log.warning(
            "no run used AVX-512 (this CPU, %s, %s): the avx512 (x86-simd-sort) order was not "
            "generated; run `%s` on %s to add it",
            model,
            "has AVX-512" if avx512 else "has none",
            ARGSORT_COMMAND,
            AVX512_CPU,
        )
    return named


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--numpy",
        nargs="+",
        default=list(DEFAULT_BUILDS),
        metavar="VERSION",
        help="numpy builds to install from the registry (default: %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=ARGSORT_DIR, help="output folder (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    out = [] if args.out == ARGSORT_DIR else ["--out", str(args.out)]
    command = " ".join([ARGSORT_COMMAND, "--numpy", *args.numpy, *out])
    named = generate(args.numpy, args.out, command)
    for name, group in named.items():
        overlaps = first_k_overlaps(group["order"])
        print(f"{name}: first-K overlap with fold order {overlaps} <- {_builds(group['runs'])}")
    return 0
