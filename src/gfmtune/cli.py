"""The ``gfmtune`` command: one subcommand per workflow stage, each also runnable by hand.

Each subcommand lives in the module that does the work; that module defines
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only when used.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from gfmtune import __version__
from gfmtune.models.plugins import load_plugins, plugins_from_env

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("gfmtune.data.synthetic", "write a synthetic PASTIS dataset"),
    "download": ("gfmtune.data.download.cli", "fetch and verify PASTIS-HD (S2 part)"),
    "store": ("gfmtune.data.store", "write the S2 series and labels to the Zarr store"),
    "manifests": ("gfmtune.data.manifests", "write label-split and timestep manifests"),
    "argsort-orders": ("gfmtune.data.argsort_orders", "generate the paper split's argsort orders"),
    "bench-data": ("gfmtune.bench.reader", "benchmark the Zarr reader against raw .npy reads"),
    "bench-train": ("gfmtune.bench.train", "training speed: gfmtune's path against the authors'"),
    "plan": ("gfmtune.plan.command", "FLOPs, GPU-hours and disk of the configured grid"),
    "params": ("gfmtune.models.params", "parameter table of the paper-size models"),
    "weights": ("gfmtune.models.weights", "fetch and verify a pretrained checkpoint"),
    "train": ("gfmtune.train.job", "train and evaluate one grid cell"),
    "results": ("gfmtune.results.command", "tables, figures and claims from finished cells"),
    "training-curves": (
        "gfmtune.results.training_curves",
        "training loss and validation per epoch",
    ),
    "predict-maps": ("gfmtune.results.maps", "GeoTIFF test maps of each family's best cell"),
    "bench-validation": (
        "gfmtune.bench.validation",
        "what the non-paper validation switches change",
    ),
    "bench-numerics": (
        "gfmtune.bench.numerics",
        "what portable CPU numerics cost and whether they hold",
    ),
    "gpu-check": ("gfmtune.bench.gpu_check", "what gfmtune does on a GPU, in about 8 minutes"),
    "gpu-wheels": ("gfmtune.bench.wheels", "wheels a bare, offline GPU machine needs"),
}
#: old name -> subcommand, so that scripts written for an earlier name keep working
ALIASES: dict[str, str] = {"convert": "store"}


def main(argv: list[str] | None = None) -> int:
    own_process = argv is None  # the command line's own process, which may restart itself
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="gfmtune", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"gfmtune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        aliases = [old for old, new in ALIASES.items() if new == name]
        sub.add_parser(name, help=help_text, add_help=False, aliases=aliases)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] == "--version":
        parser.parse_args(argv[:1])  # prints the version and exits
    verbose = argv[0] in ("-v", "--verbose")
    argv = argv[1:] if verbose else argv
    name = ALIASES.get(argv[0], argv[0])
    if name not in SUBCOMMANDS:
        parser.error(f"unknown command {name!r}; choose from {', '.join(SUBCOMMANDS)}")
    try:
        load_plugins(plugins_from_env())  # before the models' names become argument choices
    except ValueError as err:
        parser.error(str(err))
    module = importlib.import_module(SUBCOMMANDS[name][0])
    cmd = argparse.ArgumentParser(prog=f"gfmtune {name}", description=SUBCOMMANDS[name][1])
    module.add_arguments(cmd)
    args = cmd.parse_args(argv[1:])
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if own_process:
            restart_with(module, args)
        return int(module.run(args) or 0)
    except (ValueError, OSError, RuntimeError) as err:
        # Known failure modes (bad input, failed download, ...) end with one clear line.
        logging.getLogger("gfmtune").error("%s", err)
        return 1


def restart_with(module: object, args: argparse.Namespace) -> None:
    """Run this command again, in this process's place, with the environment variables that
    ``module.restart_environment(args)`` says its libraries must see when they start (the
    train command's portable CPU numerics); nothing when it needs none."""
    env = getattr(module, "restart_environment", lambda _: {})(args)
    if not env:
        return
    logging.getLogger("gfmtune").info(
        "restarting with %s", " ".join(f"{k}={v!r}" for k, v in env.items())
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, **env})


if __name__ == "__main__":
    sys.exit(main())
