"""Entry point: the command group, and the one place library errors become messages and exit codes."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

import replicator
from replicator.errors import ConfigError, FormatError, ReplicatorError, StorageError

# Stable exit codes for scripts: 1 generic failure, 2 usage (click's own), then one per problem class.
EXIT_CODES: list[tuple[type[ReplicatorError], int]] = [
    (ConfigError, 2),
    (StorageError, 3),
    (FormatError, 4),
    (ReplicatorError, 1),
]


class ReplicatorGroup(click.Group):
    """Turns expected failures into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ReplicatorError as exc:
            click.echo(f"error: {exc}", err=True)
            code = next(c for kind, c in EXIT_CODES if isinstance(exc, kind))
            sys.exit(code)


@click.group(cls=ReplicatorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(replicator.__version__, prog_name="replicator")
def cli() -> None:
    """Replicate SQLite databases to object storage and restore them to any point in time."""


@cli.command()
def version() -> None:
    """Print the versions of replicator, SQLite (apsw) and the segment format."""
    import apsw

    from replicator.segment import FORMAT_VERSION

    click.echo(f"replicator {replicator.__version__}")
    click.echo(f"sqlite {apsw.sqlite_lib_version()} (apsw {apsw.apsw_version()})")
    click.echo(f"segment format {FORMAT_VERSION}")


def _not_yet(issue: int) -> None:
    raise click.ClickException(f"this command is not built yet (tracked in issue #{issue})")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@cli.command()
@click.argument("db_path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.argument("replica_urls", nargs=-1)
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="YAML config.")
@click.option("--sync-interval", help="At most one upload per replica per interval while busy. [default: 1s]")
@click.option("--snapshot-interval", help="How often to take a fresh snapshot. [default: 24h]")
@click.option("--retention", help="Point-in-time restore window kept on the replicas. [default: 24h]")
@click.option("--min-checkpoint-pages", type=int, help="Checkpoint once the WAL holds this many pages. [default: 1000]")
@click.option("--shutdown-timeout", help="Longest wait for the final upload on SIGTERM. [default: 30s]")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def replicate(
    db_path: Path | None,
    replica_urls: tuple[str, ...],
    config_path: Path | None,
    verbose: bool,
    **options: str | int | None,
) -> None:
    """Tail a database's WAL and ship committed transactions to one or more replicas.

    \b
      replicator replicate /data/app.db s3://bucket/app [/backups/app ...]
      replicator replicate -c replicator.yml

    Runs until SIGTERM or SIGINT, then ships everything committed and exits 0 (non-zero if that fails).
    """
    from replicator.config import DatabaseConfig, load_config, make_settings
    from replicator.replicate import Replicator, run_all
    from replicator.storage import open_client

    _setup_logging(verbose)
    if config_path is not None:
        if db_path is not None or replica_urls:
            raise click.UsageError("give either -c CONFIG or DB_PATH REPLICA_URL..., not both")
        databases = load_config(config_path)
        overrides = {k: v for k, v in options.items() if v is not None}
        databases = [DatabaseConfig(d.path, d.replicas, make_settings(overrides, d.settings)) for d in databases]
    else:
        if db_path is None or not replica_urls:
            raise click.UsageError("give DB_PATH and at least one REPLICA_URL (or -c CONFIG)")
        databases = [DatabaseConfig(db_path, list(replica_urls), make_settings(dict(options)))]

    replicators = [Replicator(d.path, [open_client(u) for u in d.replicas], d.settings) for d in databases]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    errors = run_all(replicators, stop)
    if errors:
        for error in errors:
            click.echo(f"error: {error}", err=True)
        sys.exit(1)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def restore(args: tuple[str, ...]) -> None:
    """Rebuild a database from a replica, at its latest state or a point in time."""
    _not_yet(4)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def generations(args: tuple[str, ...]) -> None:
    """List the generations in a replica."""
    _not_yet(4)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def snapshots(args: tuple[str, ...]) -> None:
    """List the snapshots in a replica."""
    _not_yet(4)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def wal(args: tuple[str, ...]) -> None:
    """List the WAL segments in a replica."""
    _not_yet(4)
