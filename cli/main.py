"""Entry point: the command group, and the one place library errors become messages and exit codes."""

from __future__ import annotations

import sys
from typing import Any

import click

import replicator
from replicator.barrier import WaitTimeout
from replicator.errors import ConfigError, FormatError, ReplicatorError, StorageError

from .listing import generations, snapshots, wal
from .replicate import replicate
from .restore import restore
from .status import status
from .verify import verify
from .wait import wait

# Stable exit codes for scripts: 1 generic failure, 2 usage (click's own), then one per problem class.
EXIT_CODES: list[tuple[type[ReplicatorError], int]] = [
    (ConfigError, 2),
    (StorageError, 3),
    (FormatError, 4),
    (WaitTimeout, 5),
    (ReplicatorError, 1),
]


def exit_code(exc: BaseException) -> int:
    """The exit code for a failure: its class's, or 1 for anything unexpected."""
    return next((c for kind, c in EXIT_CODES if isinstance(exc, kind)), 1)


class ReplicatorGroup(click.Group):
    """Turns expected failures into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ReplicatorError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exit_code(exc))


@click.group(cls=ReplicatorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="replicator", prog_name="replicator")  # looked up when asked
def cli() -> None:
    """Replicate SQLite databases to object storage and restore them to any point in time."""
    from replicator.storage import apply_litestream_credentials

    apply_litestream_credentials()  # a Litestream deployment's LITESTREAM_ACCESS_KEY_ID works unchanged


@cli.command()
def version() -> None:
    """Print the versions of replicator, SQLite (apsw) and the segment format."""
    import apsw

    from replicator.segment import FORMAT_VERSION

    click.echo(f"replicator {replicator.__version__}")
    click.echo(f"sqlite {apsw.sqlite_lib_version()} (apsw {apsw.apsw_version()})")
    click.echo(f"segment format {FORMAT_VERSION}")


for command in (replicate, restore, verify, wait, status, generations, snapshots, wal):
    cli.add_command(command)
