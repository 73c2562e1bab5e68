"""Running the project's Snakemake workflow from tests, in a scratch working directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
#: Any attempt to reach the network through a proxy-aware client fails at once.
OFFLINE_ENV = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "HF_HUB_OFFLINE": "1"}  # fmt: skip


def run_snakemake(workdir: Path, *args: str, config: dict | None = None,
                  timeout: float = 600) -> subprocess.CompletedProcess:  # fmt: skip
    """Run snakemake on the repo's Snakefile in ``workdir`` with an optional config overlay."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), *args]  # fmt: skip
    if config is not None:
        overlay = workdir / "overlay.yaml"
        overlay.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(overlay)]
    # the gfmtune command the rules call: the one installed beside this interpreter
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, **OFFLINE_ENV, "PATH": path}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=workdir)  # fmt: skip


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake run, as {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\S+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def readme_commands() -> tuple[list[str], str]:
    """The README's two fresh-machine commands: command 1 split at ``&&``, and command 2."""
    block = (REPO / "README.md").read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line for line in block.splitlines() if line and not line.startswith("#")]
    if len(lines) != 2:
        raise AssertionError(f"README's first code block holds {len(lines)} commands, not 2")
    return [part.strip() for part in lines[0].split("&&")], lines[1].strip()


@dataclass(frozen=True)
class PlannedJob:
    """One job as a snakemake run lists it (``rule NAME:`` and its indented lines)."""

    rule: str
    threads: int  # 1 when not printed
    resources: dict[str, str]
    wildcards: dict[str, str]
    shell: str  # the ``Shell command:`` line under -p (printshellcmds); "" without one


def planned_jobs(output: str) -> list[PlannedJob]:
    """Every job a snakemake run or dry run lists in ``output``, in its order."""
    jobs = []
    listing = re.compile(r"^(?:local)?rule (\w+):\n((?:    .*\n)*)(?:Shell command: (.*))?", re.M)
    for rule, body, shell in listing.findall(output):
        fields = dict(re.findall(r"^    (\w+): (.*)$", body, re.M))
        resources, wildcards = (
            dict(item.split("=", 1) for item in fields[name].split(", ")) if name in fields else {}
            for name in ("resources", "wildcards")
        )
        jobs.append(PlannedJob(rule, int(fields.get("threads", 1)), resources, wildcards, shell))
    return jobs
