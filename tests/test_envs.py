"""The lock and the conda route (``snakemake --sdm conda``) that installs from it.

Snakemake copies ``envs/gfmtune.yaml`` and its post-deploy script into its conda prefix, and
conda runs pip from there. A stand-in ``conda`` on PATH lets Snakemake do its part for real and
records the pip command lines conda and the post-deploy script would run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
from pip._internal.network.session import PipSession
from pip._internal.req.req_file import parse_requirements

from tests.workflow_helpers import REPO, readme_commands, run_snakemake

#: pip's parser, which these tests use, imports pkg_resources
pytestmark = pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:DeprecationWarning")
LOCK = REPO / "envs" / "lock-linux-x86_64-py3.11.txt"
ENV_FILE = REPO / "envs" / "gfmtune.yaml"

#: answers Snakemake's checks; ``env create`` writes conda's pip requirements file beside the
#: env file, records the command conda would run there (conda.env.installers.pip) and gives the
#: env the python of ``env-python``
FAKE_CONDA = """#!{python}
import json, os, pathlib, shutil, sys
import yaml
args, base = sys.argv[1:], pathlib.Path(sys.argv[0]).parents[1]
if args == ["--version"]:
    print("conda 25.1.1")
elif args[:2] == ["info", "--json"]:
    print(json.dumps({{"conda_prefix": str(base), "platform": "linux-64"}}))
elif args[:2] == ["config", "--get"]:
    print(json.dumps({{"get": {{"channel_priority": "strict"}}}}))
elif args[:1] == ["clean"]:
    pass
elif args[:2] == ["env", "create"]:
    file, prefix = args[args.index("--file") + 1], args[args.index("--prefix") + 1]
    spec = yaml.safe_load(pathlib.Path(file).read_text())
    pip = next(dep["pip"] for dep in spec["dependencies"] if isinstance(dep, dict))
    workdir = pathlib.Path(file).resolve().parent
    requirements = workdir / "condaenv.test.requirements.txt"
    requirements.write_text("\\n".join(pip))
    pathlib.Path(prefix, "bin").mkdir(parents=True)
    shutil.copy(base / "env-python", pathlib.Path(prefix, "bin", "python"))
    argv = ["python", "-m", "pip", "install", "-U", "-r", str(requirements), "--exists-action=b"]
    record = {{"cwd": str(workdir), "argv": argv, "env": os.environ.get("GFMTUNE_WORKFLOW")}}
    (base / "env-create.json").write_text(json.dumps(record))
else:
    sys.exit(f"fake conda: unexpected {{args}}")
"""


def fake_conda(base: Path) -> None:
    """A conda base in ``base``: ``bin/conda``, ``bin/activate`` (puts the env's bin first on
    PATH) and ``env-python``, the env's python, which writes its arguments to ``python.args``."""
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "conda").write_text(FAKE_CONDA.format(python=sys.executable))
    (base / "bin" / "activate").write_text('export PATH="$1/bin:$PATH"\n')
    (base / "env-python").write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {base}/python.args\n")
    for name in ("bin/conda", "env-python"):
        (base / name).chmod(0o755)


def lock_pins(path: Path) -> dict[str, set[str]]:
    """Requirement -> sha256 hashes, as pip reads ``path``."""
    parsed = parse_requirements(str(path), session=PipSession())
    return {req.requirement.strip(): set(req.options["hashes"]["sha256"]) for req in parsed}


def test_env_file_names_the_locks_digest() -> None:
    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()
    assert f"# lock sha256: {digest}\n" in ENV_FILE.read_text(), "run .ci/lock"


def test_lock_pins_every_package_with_hashes_and_the_readme_torch_pair() -> None:
    pins = lock_pins(LOCK)
    assert all(pins.values()) and all("==" in req for req in pins)
    torch_pair = readme_commands()[0][0].split()[2:]  # pip install torch==... torchvision==...
    assert torch_pair and set(torch_pair) <= set(pins), torch_pair
    assert not any(req.startswith("gfmtune") for req in pins)


def test_conda_route_installs_the_lock_and_project_from_the_copied_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "conda-base"
    fake_conda(base)
    monkeypatch.setenv("PATH", f"{base / 'bin'}{os.pathsep}{os.environ['PATH']}")
    done = run_snakemake(tmp_path, "--sdm", "conda", "--conda-create-envs-only", "--cores", "1",
                         "--configfile", str(REPO / "config" / "demo.yaml"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    created = json.loads((base / "env-create.json").read_text())
    workdir = Path(created["cwd"])
    assert workdir == tmp_path / ".snakemake" / "conda", workdir  # the copy, not envs/
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("GFMTUNE_WORKFLOW", created["env"])
    assert lock_pins(Path(created["argv"][6])) == lock_pins(LOCK)
    post_deploy = (base / "python.args").read_text().splitlines()
    assert post_deploy == ["-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e",
                           str(REPO)]  # fmt: skip
