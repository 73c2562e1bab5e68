"""docs/api.md works as written: its Python code blocks run, in order, in one fresh interpreter
in an empty folder; and ``gfmtune``'s exports are importable without importing torch first."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import gfmtune
from tests.workflow_helpers import REPO

API_DOC = REPO / "docs" / "api.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
SRC = str(Path(gfmtune.__file__).resolve().parents[1])


def python_blocks(text: str) -> list[str]:
    """The code of each fenced ```python block, in order."""
    return PYTHON_BLOCK.findall(text)


def run_python(code: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that imports this checkout's gfmtune."""
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_python_blocks_are_found() -> None:
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = x\n"]


def test_api_doc_runs_as_written(tmp_path: Path) -> None:
    blocks = python_blocks(API_DOC.read_text())
    assert len(blocks) >= 6, "docs/api.md lost its code blocks"
    done = run_python("\n".join(blocks), tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert (tmp_path / "cells" / "croma_tiny" / "metrics.json").is_file()
    assert (tmp_path / "label_0.tif").is_file()


def test_exports_are_lazy_and_resolve() -> None:
    code = (
        "import sys, gfmtune\n"
        "assert 'torch' not in sys.modules, 'import gfmtune imported torch'\n"
        "from gfmtune.cli import main\n"
        "assert 'torch' not in sys.modules, 'the CLI imported torch before a command'\n"
        "import importlib\n"
        "for name, module in gfmtune.EXPORTS.items():\n"
        "    assert getattr(gfmtune, name) is getattr(importlib.import_module(module), name)\n"
        "    assert name in dir(gfmtune)\n"
        "try:\n"
        "    gfmtune.no_such_name\n"
        "except AttributeError as err:\n"
        "    assert 'no_such_name' in str(err)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    done = run_python(code, REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(gfmtune.__all__) == sorted(["__version__", *gfmtune.EXPORTS])
