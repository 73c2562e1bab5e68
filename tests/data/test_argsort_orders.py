"""The argsort-order generator: CPU levels, settings, dedup and naming, files, the probe."""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gfmtune.data import argsort_orders as ao
from gfmtune.data import manifests as mf

AVX2 = ["SSSE3", "SSE41", "POPCNT", "SSE42", "AVX", "F16C", "FMA3", "AVX2"]
AVX512 = [*AVX2, "AVX512F", "AVX512CD", "AVX512_SKX", "AVX512_CLX"]
X86_64 = platform.machine() in ("x86_64", "AMD64")
NETWORK_ENV = "GFMTUNE_TEST_NUMPY_INSTALL"


def _run(version: str, setting: str, enabled: list[str], order: list[int]) -> dict:
    return {"numpy": version, "setting": setting, "disabled": [], "cpu_baseline": ["SSE"],
            "enabled": enabled, "order": order}  # fmt: skip


@pytest.mark.parametrize(
    ("enabled", "level"),
    [
        (AVX512, "avx512"),
        (AVX2, "avx2"),
        ([], "baseline"),
        (["X86_V3", "X86_V4", "AVX512_ICL"], "avx512"),  # numpy 2.4 names
        (["X86_V3"], "avx2"),
        (["SSE42", "AVX"], "baseline"),
    ],
)
def test_cpu_level(enabled: list[str], level: str) -> None:
    assert ao.cpu_level(enabled) == level


def test_disable_sets_per_cpu() -> None:
    assert ao.disable_sets(AVX512) == {
        "native": [],
        "no-avx512": ["AVX512F", "AVX512CD", "AVX512_SKX", "AVX512_CLX"],
        "baseline": AVX512,
    }
    # without AVX-512, "no-avx512" disables nothing more than "native": not run twice
    assert ao.disable_sets(AVX2) == {"native": [], "baseline": AVX2}
    assert ao.disable_sets(["X86_V3"]) == {"native": [], "baseline": ["X86_V3"]}
    assert ao.disable_sets([]) == {"native": []}


def test_parse_probe_skips_warnings_and_checks_keys() -> None:
    line = '{"numpy": "2.2.6", "cpu_baseline": [], "enabled": [], "order": [1, 0]}'
    assert ao.parse_probe(f"UserWarning: something\n{line}\n")["order"] == [1, 0]
    with pytest.raises(RuntimeError, match="printed nothing"):
        ao.parse_probe("\n")
    with pytest.raises(RuntimeError, match=r"lacks \['cpu_baseline', 'enabled'\]"):
        ao.parse_probe('{"numpy": "1.26.4", "order": []}')


def test_name_orders_dedups_and_names_by_lowest_level() -> None:
    generic, simd = [0, 3, 2, 1], [3, 2, 1, 0]
    runs = [
        _run("1.26.4", "native", AVX2, generic),  # 1.26 has no AVX2 argsort
        _run("1.26.4", "baseline", [], generic),
        _run("2.2.6", "native", AVX2, simd),
        _run("2.2.6", "baseline", [], generic),
        _run("2.3.5", "native", AVX2, [0, 1, 2, 3]),
    ]
    named = ao.name_orders(runs)
    assert set(named) == {"baseline", "avx2", "identity"}
    assert named["baseline"]["order"] == generic
    assert [(r["numpy"], r["setting"]) for r in named["baseline"]["runs"]] == [
        ("1.26.4", "native"), ("1.26.4", "baseline"), ("2.2.6", "baseline")]  # fmt: skip
    assert named["avx2"]["order"] == simd and len(named["avx2"]["runs"]) == 1


def test_name_orders_refuses_two_orders_for_one_name() -> None:
    runs = [_run("2.1.3", "native", AVX2, [1, 0, 2]), _run("2.2.6", "native", AVX2, [2, 1, 0])]
    with pytest.raises(RuntimeError, match=r"both be named 'avx2' \(numpy 2.1.3 native and 2.2.6"):
        ao.name_orders(runs)


def test_first_k_overlaps() -> None:
    order = list(range(1454, -1, -1))  # reversed: 1 % and 10 % share nothing, 50 % only 727
    assert ao.first_k_overlaps(order) == {1: 0, 10: 0, 50: 0}
    assert ao.first_k_overlaps(list(range(1455))) == {1: 14, 10: 145, 50: 727}


def _fake_probe(python: Path, disabled: list[str], _n: int) -> dict:
    """numpy ``<version>`` from the venv's folder name, on an AVX2 machine, for 6 keys: 2.0-2.2
    sort equal keys in reverse with AVX2 enabled, >= 2.3 keep them, the rest use one generic
    order."""
    n = 6
    version = python.parent.parent.name.removeprefix("numpy-")
    enabled = [f for f in AVX2 if f not in disabled]
    if "AVX2" not in enabled or version.startswith("1."):
        order = [0, *range(n - 1, 0, -1)]
    else:
        order = list(range(n)) if version >= "2.3" else list(range(n - 1, -1, -1))
    return {"numpy": version, "cpu_baseline": ["SSE"], "enabled": enabled, "order": order}


def test_generate_writes_one_file_per_order_with_provenance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ao, "install_numpy", lambda v, root: root / f"numpy-{v}" / "bin" / "py")
    monkeypatch.setattr(ao, "run_probe", _fake_probe)
    with caplog.at_level(logging.WARNING):
        named = ao.generate(["1.26.4", "2.2.6", "2.3.5"], tmp_path, "gfmtune argsort-orders x")
    names = ["avx2", "baseline", "identity"]
    files = [f"{name}.{ext}" for name in names for ext in ("csv", "yaml")]
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    for name, group in named.items():
        assert mf.argsort_order(name, 6, tmp_path).tolist() == group["order"]
    meta = yaml.safe_load((tmp_path / "baseline.yaml").read_text())
    assert meta["variant"] == "baseline" and meta["n"] == 6
    assert meta["call"] == ao.AUTHORS_CALL
    assert meta["generated"]["command"] == "gfmtune argsort-orders x"
    assert {"date", "cpu_model", "cpu_avx512", "python"} <= set(meta["generated"])
    avx2 = " ".join(AVX2)  # as NPY_DISABLE_CPU_FEATURES takes them
    assert [(r["numpy"], r["setting"], r["disabled"]) for r in meta["runs"]] == [
        ("1.26.4", "native", ""), ("1.26.4", "baseline", avx2),
        ("2.2.6", "baseline", avx2), ("2.3.5", "baseline", avx2)]  # fmt: skip
    assert meta["runs"][0]["enabled"] == avx2 and meta["runs"][1]["enabled"] == ""
    assert all("order" not in r for r in meta["runs"])
    assert "the avx512 (x86-simd-sort) order was not generated" in caplog.text
    assert "run `gfmtune argsort-orders` on a CPU with AVX-512" in caplog.text


def test_failed_probe_names_the_setting_and_numpy_message() -> None:
    baseline = ao.run_probe(Path(sys.executable), [])["cpu_baseline"]
    with pytest.raises(RuntimeError) as err:  # numpy refuses to disable its baseline
        ao.run_probe(Path(sys.executable), baseline[:1])
    assert f"NPY_DISABLE_CPU_FEATURES={baseline[0]!r}" in str(err.value)
    assert "cannot disable CPU feature" in str(err.value)


@pytest.mark.skipif(not X86_64, reason="the shipped orders are x86-64 numpy's")
def test_probe_with_this_numpy_at_baseline_gives_the_shipped_baseline_order() -> None:
    """The probe runs the authors' call in a subprocess; this venv's numpy with every dispatch
    target disabled uses the generic sort, as the builds behind ``baseline.csv`` did."""
    native = ao.run_probe(Path(sys.executable), [])
    assert native["numpy"] == np.__version__
    at_baseline = ao.run_probe(Path(sys.executable), native["enabled"])
    assert at_baseline["enabled"] == []
    shipped = pd.read_csv(mf.ARGSORT_DIR / "baseline.csv")["position"].tolist()
    assert at_baseline["order"] == shipped


@pytest.mark.skipif(
    os.environ.get(NETWORK_ENV) != "1",
    reason=f"installs numpy 2.2.6 from PyPI into a throw-away venv; set {NETWORK_ENV}=1 to run",
)
def test_real_build_reproduces_the_shipped_files(tmp_path: Path) -> None:
    named = ao.generate(["2.2.6"], tmp_path, "test")
    assert "baseline" in named
    for name, group in named.items():
        shipped = mf.ARGSORT_DIR / f"{name}.csv"
        if shipped.is_file():
            assert pd.read_csv(shipped)["position"].tolist() == group["order"], name
