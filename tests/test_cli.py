"""The command line: every subcommand is registered, and failures are one line with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner
from replicator_cli.main import cli

COMMANDS = ["replicate", "restore", "generations", "snapshots", "wal", "version"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_version_reports_sqlite_and_format() -> None:
    result = CliRunner().invoke(cli, ["version"])
    assert result.exit_code == 0
    assert "sqlite 3." in result.output and "segment format 1" in result.output


def test_unbuilt_commands_fail_clearly() -> None:
    result = CliRunner().invoke(cli, ["restore", "s3://b/p"])
    assert result.exit_code != 0
    assert "not built yet" in result.output


def test_installed_console_script_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "replicator_cli", "version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("replicator ")
