"""The README's two fresh-machine commands and its lock install are the ones CI runs."""

from __future__ import annotations

from tests.workflow_helpers import REPO, readme_commands

CI_LINES = (REPO / ".ci" / "run").read_text().splitlines()


def test_ci_runs_the_readme_install_and_test_commands_verbatim() -> None:
    install, tests = readme_commands()
    pip_steps = [step for step in install if step.startswith("pip install")]
    assert len(pip_steps) == 2, install
    assert " && ".join(pip_steps) in CI_LINES
    assert tests in CI_LINES


def test_ci_runs_the_readme_lock_install_verbatim() -> None:
    readme = (REPO / "README.md").read_text().splitlines()
    lock_lines = [line for line in readme if line.startswith("pip install --require-hashes")]
    assert len(lock_lines) == 1, lock_lines
    assert lock_lines[0] in CI_LINES
    assert CI_LINES.index(lock_lines[0]) < CI_LINES.index(readme_commands()[1])
