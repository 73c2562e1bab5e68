"""Plug-in encoders: register_model's checks, and a throw-away encoder written in a few lines
that the whole workflow (params table, train, results) picks up from the ``plugins`` key."""

from __future__ import annotations

import logging
import os
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from gfmtune.config import ConfigError, validate_config
from gfmtune.models import catalog, registry
from gfmtune.models.contract import EncoderContractError, warn_small_grid
from gfmtune.models.plugins import PluginError, load_plugins
from gfmtune.models.policies import InputPolicy
from gfmtune.models.registry import ModelSpec, build_model, register_model
from tests.workflow_helpers import REPO, run_snakemake

#: A plug-in module: a 4-level conv encoder honouring the contract, under its own family.
PLUGIN = textwrap.dedent(
    """
    import torch
    from torch import nn

    from gfmtune.models.policies import InputPolicy
    from gfmtune.models.registry import register_model


    class ConvEncoder(nn.Module):
        out_dims = [8, 8, 8, 8]

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(10, 8, 4, stride=4)
            self.levels = nn.ModuleList(nn.Conv2d(8, 8, 3, padding=1) for _ in range(4))

        def truncate(self):
            pass

        def forward(self, x):
            h, out = self.stem(x), []
            for conv in self.levels:
                h = torch.relu(conv(h))
                out.append(h)
            return out


    register_model("conv_plugin", family="ConvNet", policy=InputPolicy("native"),
                   build_encoder=ConvEncoder, decoder_channels=16, ltae_heads=4)
    """
)


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The plug-in module importable from ``tmp_path``; its models unregistered afterwards."""
    (tmp_path / "conv_plugin_mod.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(registry.REGISTRY), set(catalog.CHECKPOINTS)
    yield "conv_plugin_mod"
    sys.modules.pop("conv_plugin_mod", None)
    for name in set(registry.REGISTRY) - before[0]:
        del registry.REGISTRY[name], catalog.MODELS[name]
    for name in set(catalog.CHECKPOINTS) - before[1]:
        del catalog.CHECKPOINTS[name]


class TwoLevels(torch.nn.Module):
    out_dims = (8, 8)

    def truncate(self) -> None:
        pass


def test_plugin_model_builds_and_validates(plugin: str) -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]: 'conv_plugin' is not a registered"):
        validate_config({"models": ["conv_plugin"]})
    load_plugins([plugin])
    assert validate_config({"models": ["conv_plugin"]})["models"] == ["conv_plugin"]
    assert catalog.family_of("conv_plugin") == "ConvNet"
    assert not catalog.facts("conv_plugin").from_scratch
    model = build_model("conv_plugin", encoder_trainable=False)
    assert model(torch.randn(2, 3, 10, 32, 32)).shape == (2, 20, 32, 32)


def test_register_model_refuses_a_duplicate_name(plugin: str) -> None:
    with pytest.raises(ValueError, match=r"'croma'.*already registered"):
        register_model("croma", family="X", policy=InputPolicy(), build_encoder=TwoLevels)
    load_plugins([plugin])
    sys.modules.pop(plugin)  # imported again, the module registers its model a second time
    expected = "plugins: conv_plugin_mod: register_model('conv_plugin'): a model of this name"
    with pytest.raises(PluginError, match=re.escape(expected)):
        load_plugins([plugin])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad-Name"}, "must match"),
        ({"build_encoder": None}, "exactly one of build_encoder"),
        ({"build_baseline": TwoLevels}, "exactly one of build_encoder"),
        ({"policy": InputPolicy("tiles")}, "policy must be an InputPolicy"),
        ({"family": ""}, "family must be"),
        ({"runtime": 0}, "runtime must be > 0"),
        ({"checkpoint": "model.pt"}, "checkpoint must be a gfmtune.models.catalog.Checkpoint"),
        ({"checkpoint": catalog.CROMA_BASE, "build_encoder": None, "build_baseline": TwoLevels},
         "a checkpoint needs build_encoder"),
    ],
)  # fmt: skip
def test_register_model_names_the_problem(kwargs: dict, message: str, plugin: str) -> None:
    args = {"name": "bad_one", "family": "Bad", "policy": InputPolicy(), "build_encoder": TwoLevels}
    args |= kwargs
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        register_model(**args)
    assert str(err.value).startswith(f"register_model({args['name']!r}): ")
    assert "bad_one" not in registry.REGISTRY and "bad_one" not in catalog.MODELS


def test_encoder_breaking_the_contract_is_named_when_built(plugin: str) -> None:
    register_model("two_levels", family="Bad", policy=InputPolicy(), build_encoder=TwoLevels)
    with pytest.raises(EncoderContractError) as err:
        build_model("two_levels")
    first, *lines = str(err.value).splitlines()
    assert first.startswith(f"model 'two_levels': encoder {__name__}:TwoLevels breaks the encoder")
    assert lines[0].strip().startswith("out_dims must list 4 equal positive channel counts")
    assert "got (8, 8)" in lines[0]


def test_missing_plugin_module_is_named(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match=r"cannot import 'no_such_plugin_mod'.*PYTHONPATH"):
        load_plugins(["no_such_plugin_mod"])
    with pytest.raises(PluginError, match="expected a list of module names"):
        load_plugins("conv_plugin_mod")  # type: ignore[arg-type]


class Stride16(torch.nn.Module):
    """A stride-16 stem and 4 levels: the docs' paper-size example, smaller."""

    out_dims = (8, 8, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(10, 8, 16, stride=16)

    def truncate(self) -> None:
        pass

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.stem(x)] * 4


@pytest.mark.parametrize(
    ("policy", "patch", "side", "grid"),
    [
        (InputPolicy("native"), 32, 32, (2, 2)),  # the demo's patches
        (InputPolicy("native"), 48, 48, (3, 3)),
        (InputPolicy("native"), 64, 64, (4, 4)),
        (InputPolicy("native"), 128, 128, (8, 8)),  # PASTIS
        (InputPolicy("resize", 32), 128, 32, (2, 2)),  # the policy's side, not the patch's
        (InputPolicy("crop_windows", 64), 128, 64, (4, 4)),
    ],
)
def test_small_token_grid_is_warned_naming_model_input_and_grid(
    policy: InputPolicy, patch: int, side: int, grid: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    spec = ModelSpec("stride16", policy, Stride16, decoder_channels=16, ltae_heads=4)
    encoder = Stride16().train()
    state = torch.random.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="gfmtune.models.contract"):
        assert warn_small_grid(encoder, spec, patch) == grid
    assert encoder.training and torch.equal(torch.random.get_rng_state(), state)
    messages = [r.getMessage() for r in caplog.records]
    if min(grid) >= 4:
        assert messages == []
        return
    (message,) = messages
    h, w = grid
    assert message.startswith(
        f"model 'stride16': its encoder gives a {h} x {w} token grid on {side} x {side} px input "
        f"({policy.kind} policy, {patch} px patches); below 4 x 4 the neck's coarsest level is 1"
    )


@pytest.mark.slow
def test_plugin_encoder_through_the_workflow(
    tmp_path: Path, plugin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The throw-away encoder trained on the synthetic data by snakemake, into the tables."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config |= {"run": "plug", "models": ["conv_plugin"], "plugins": [plugin]}
    config["manifests"] = {"label_percents": [100], "timesteps": [1]}
    config["train"] |= {"ft_rates": [0.0]}
    config["train"]["settings"] |= {"epochs": 1}
    paths = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    result = run_snakemake(tmp_path, "--cores", "2", "--until", "results",
                           config=config, timeout=800)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    tables = tmp_path / "results" / "plug" / "tables"
    miou = pd.read_csv(tables / "miou.csv")
    assert list(miou.model_name) == ["conv_plugin"] and list(miou.model) == ["ConvNet"]
    assert miou.ft_rate.tolist() == [0.0] and 0 <= miou.miou_paper.iloc[0] <= 100
    params = pd.read_csv(tables / "params.csv")
    assert params.name.tolist() == ["conv_plugin"] and params.model.tolist() == ["ConvNet"]
