"""The command line: every subcommand is registered, and failures are one line with a non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from replicator_cli.common import Timestamp
from replicator_cli.main import cli

from replicator.history import format_time

COMMANDS = ["replicate", "restore", "verify", "generations", "snapshots", "wal", "version"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_version_reports_sqlite_and_format() -> None:
    result = CliRunner().invoke(cli, ["version"])
    assert result.exit_code == 0
    assert "sqlite 3." in result.output and "segment format 2" in result.output


@pytest.mark.parametrize("command", ["restore", "verify", "generations", "snapshots", "wal"])
def test_a_bad_replica_url_is_one_line_and_exit_2(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "gs://bucket/prefix", *(["-o", "x.db"] if command == "restore" else [])])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: unsupported replica URL 'gs://bucket/prefix'; use s3://BUCKET/PREFIX or a directory path"
    ]


def test_installed_console_script_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "replicator_cli", "version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("replicator ")


@given(st.integers(min_value=946_684_800_000_000, max_value=4_102_444_800_000_000))  # years 2000-2100
def test_a_time_shown_by_the_listings_reads_back_as_the_same_microsecond(time_us: int) -> None:
    """Restoring to a time copied from `wal` or `snapshots` must include that object, so nothing is rounded."""
    assert Timestamp().convert(format_time(time_us), None, None) == time_us
