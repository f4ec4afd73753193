"""The command line as a user meets it: `--help` of every command, the README's command table,
exit codes and one-line errors."""

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import __version__
from workflows.cli import PROG, build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
# the console script pip installed beside this interpreter: what a user types
SCRIPT = Path(sys.executable).with_name(PROG)


def _parsers(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """{command words: parser} for the top level and every command and sub-command registered."""
    found = {words: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.update(_parsers(child, words + (name,)))
    return found


def _subcommands(parser: argparse.ArgumentParser) -> list[str]:
    return [name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices]


def _required(parser: argparse.ArgumentParser) -> list[str]:
    """What usage must name: required options, positionals, options of required either-or groups."""
    names = []
    for action in parser._actions:
        if not action.option_strings:
            names.append(action.metavar or action.dest)
        elif action.required:
            names.append(action.option_strings[0])
    for group in parser._mutually_exclusive_groups:
        if group.required:
            names += [action.option_strings[0] for action in group._group_actions]
    return names


PARSERS = _parsers(build_parser())


def _readme_table() -> list[tuple[str, str]]:
    """(command cell, example) of each row of the README's command table."""
    section = README.read_text().split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` — .*\| `([^`]+)` \|$", section, re.M)


def _readme_commands() -> set[tuple[str, ...]]:
    """`features info / verify / import-tsv / export-tsv` -> ("features", "info"), ("features", "verify"), ..."""
    commands = set()
    for cell, _ in _readme_table():
        command, _, actions = cell.partition(" ")
        commands |= {(command, *action.split())[:2] for action in actions.split(" / ")} if actions else {(command,)}
    return commands


def cli(*args):
    return subprocess.run([sys.executable, "-m", "workflows.cli", *args], capture_output=True, text=True)


def test_version():
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"lxmert-pipeline {__version__}"


def test_usage_errors_exit_2():
    assert cli().returncode == 2
    assert cli("no-such-command").returncode == 2
    out = cli("features", "info")
    assert out.returncode == 2 and "DIR" in out.stderr


def test_user_error_is_one_line_and_debug_shows_traceback(tmp_path):
    out = cli("features", "info", str(tmp_path / "missing"))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"lxmert-pipeline features: error: {tmp_path / 'missing'}: "
                                               "no such feature-store directory"]
    out = cli("--debug", "features", "info", str(tmp_path / "missing"))
    assert out.returncode == 1 and "Traceback" in out.stderr


@pytest.mark.parametrize("words", PARSERS, ids=lambda words: " ".join(words) or PROG)
def test_every_command_has_help_naming_its_required_options(words):
    out = subprocess.run([str(SCRIPT), *words, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    usage = out.stdout.split("\n\n", 1)[0]
    assert usage.startswith(f"usage: {' '.join((PROG, *words))} "), usage
    parser = PARSERS[words]
    missing = [name for name in _required(parser) if name not in usage]
    assert not missing, f"usage of {' '.join(words) or PROG} does not name {missing}:\n{usage}"
    # a command with sub-commands lists them all
    listed = out.stdout.split("\n\n", 1)[1]
    assert all(re.search(rf"^\s+{re.escape(name)}\s", listed, re.M) for name in _subcommands(parser)), out.stdout


def test_the_readme_lists_every_command_and_only_commands_that_exist():
    commands = {words for words, parser in PARSERS.items() if words and not _subcommands(parser)}
    readme = _readme_commands()
    assert readme - commands == set(), "in README.md's command table but not a command"
    assert commands - readme == set(), "a command missing from README.md's command table"


@pytest.mark.parametrize("cell, example", _readme_table(), ids=[cell for cell, _ in _readme_table()])
def test_the_readme_examples_are_accepted_by_their_command(cell, example):
    argv = shlex.split(example)
    assert argv[0] == PROG
    args = build_parser().parse_args(argv[1:])      # a usage error exits 2 and fails the test
    assert args.command == cell.split()[0]
