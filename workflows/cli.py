"""`lxmert-pipeline <command>`: the dispatcher (the console script of setup.cfg).

Every command is a module of `workflows/commands/`, listed in `COMMANDS`, with three names:

    HELP: str                          one line for the command list
    add_arguments(parser) -> None      its options
    run(args) -> int | None            the work; 0/None ok, 1 some failure

Command modules import heavy libraries (torch, dask) inside `run`, so `--help` is fast.
Exit codes: 0 ok, 1 failure, 2 usage error, 130 interrupted. A `PipelineError` prints
as one line; any other exception prints one line too, and `--debug` shows tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from importlib import import_module
from types import ModuleType

from pipeline import __version__
from pipeline.errors import PipelineError, UsageError

PROG = "lxmert-pipeline"

# name -> module, in the order `lxmert-pipeline --help` lists them (the order of the work)
COMMANDS = {
    "synth": "workflows.commands.synth",
    "data": "workflows.commands.data",
    "train-detector": "workflows.commands.train_detector",
    "extract": "workflows.commands.extract",
    "features": "workflows.commands.features",
    "pretrain": "workflows.commands.pretrain",
    "finetune": "workflows.commands.finetune",
    "evaluate": "workflows.commands.evaluate",
    "predict": "workflows.commands.predict",
    "serve": "workflows.commands.serve",
    "convert": "workflows.commands.convert",
    "run": "workflows.commands.run",
    "demo": "workflows.commands.demo",
}


def _commands() -> dict[str, ModuleType]:
    return {name: import_module(module) for name, module in COMMANDS.items()}


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logging")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common],
        description="LXMERT from a folder of images to official benchmark numbers.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _commands().items():
        cmd = sub.add_parser(name, parents=[common], help=module.HELP, description=module.HELP)
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code = args._run(args)
    except UsageError as err:
        parser.exit(2, f"{PROG} {args.command}: error: {err}\n")
    except PipelineError as err:
        if debug:
            traceback.print_exc()
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the last line of defence, one line for users
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (run with --debug for the traceback)"
        print(f"{PROG} {args.command}: error: {type(err).__name__}: {err}{hint}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
