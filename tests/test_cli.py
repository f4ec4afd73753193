import subprocess
import sys

import pytest

from pipeline import __version__
from pipeline.cli import main


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True)


def test_version_and_help():
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"lxmert-pipeline {__version__}"
    out = cli("--help")
    assert out.returncode == 0 and "features" in out.stdout


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


@pytest.mark.parametrize("command", ["features"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and command in capsys.readouterr().out
