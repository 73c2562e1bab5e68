"""The ``gfmtune`` command line: every option of every subcommand says what it is for."""

from __future__ import annotations

import argparse
import importlib

import pytest

from gfmtune.cli import ALIASES, SUBCOMMANDS, main
from gfmtune.models.registry import REGISTRY
from gfmtune.train.settings import TrainSettings


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_option_has_help(name: str) -> None:
    parser = argparse.ArgumentParser()
    importlib.import_module(SUBCOMMANDS[name][0]).add_arguments(parser)
    bare = [a.option_strings or a.dest for a in parser._actions
            if not a.help and not isinstance(a, argparse._HelpAction)]  # fmt: skip
    assert not bare, f"gfmtune {name}: options without help: {bare}"


def test_train_help_lists_models_and_settings(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for model in REGISTRY:
        assert model in text, model
    for key in TrainSettings().to_dict():
        assert f"{key}=" in text, key


def test_old_command_names_run_their_new_command(capsys: pytest.CaptureFixture) -> None:
    for old, new in ALIASES.items():
        with pytest.raises(SystemExit) as done:
            main([old, "--help"])
        assert done.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: gfmtune {new} "), old
    main(["--help"])
    assert "store (convert)" in capsys.readouterr().out
