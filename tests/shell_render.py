"""Record the shell command of every job a ``snakemake`` dry run plans, as Snakemake renders it.

Run as ``python -m tests.shell_render OUT.json SNAKEMAKE_ARGS...``: Snakemake's own command line
runs in this process with ``Job.log_info`` (called once per planned job) wrapped, and ``OUT.json``
receives ``[{"rule", "shellcmd", "log"}]`` for each job with a shell command, whatever the exit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from snakemake.cli import main
from snakemake.jobs import Job

RECORDED: list[dict] = []


def _recording(log_info):
    def wrapped(self: Job, *args: object, **kwargs: object) -> object:
        if self.rule.shellcmd:
            RECORDED.append(
                {"rule": self.rule.name, "shellcmd": self.shellcmd, "log": list(self.log)}
            )
        return log_info(self, *args, **kwargs)

    return wrapped


def run(out: Path, args: list[str]) -> int:
    """Snakemake's CLI on ``args``; the planned jobs' shell commands go to ``out``."""
    Job.log_info = _recording(Job.log_info)
    try:
        main(args)
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        out.write_text(json.dumps(RECORDED))
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]), sys.argv[2:]))
