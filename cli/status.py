"""`replicator status`: where each database and its replicas are, from the running replicator or offline."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import human_bytes

if TYPE_CHECKING:
    from replicator.config import DirectoryConfig
    from replicator.report import DatabaseStatus, ReplicaStatus
    from replicator.storage import ReplicaClient

Target = tuple[Path, Callable[[], "list[ReplicaClient]"]]


@click.command()
@click.argument("db_path", required=False)
@click.argument("replica_urls", nargs=-1)
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="YAML config.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), help="Every database in DIR.")
@click.option("--pattern", default="*.db", show_default=True, help="With --dir: which file names are databases.")
@click.option("--recursive", is_flag=True, help="With --dir: look in subdirectories too.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per database, in a list.")
def status(
    db_path: str | None,
    replica_urls: tuple[str, ...],
    *,
    config_path: Path | None,
    directory: Path | None,
    pattern: str,
    recursive: bool,
    as_json: bool,
) -> None:
    """Show each database's generation and position, and each replica's position, lag, backlog, last error,
    restorable window and stalls.

    \b
      replicator status /data/app.db
      replicator status /data/app.db s3://bucket/app      (also offline: reads the replica)
      replicator status -c replicator.yml --json
      replicator status --dir /data/tenants s3://bucket/tenants

    A running replicator answers over its control socket. Offline, the local state and one LIST of each
    replica named (on the command line or in the config) say what they can.
    Exit codes: 0 every replica is healthy, 1 a replica is stalled, refused or cannot be read.
    """
    from replicator.report import read
    from replicator.storage import apply_litestream_credentials

    apply_litestream_credentials()
    if directory is not None:  # with --dir, every argument is a replica URL (as for replicate)
        urls = tuple(u for u in (db_path, *replica_urls) if u is not None)
        targets = _in_directory(directory, urls, pattern, recursive)
    else:
        targets = _targets(None if db_path is None else Path(db_path), replica_urls, config_path)
    reports = [read(path, clients) for path, clients in targets]
    if as_json:
        click.echo(json.dumps([r.to_json() for r in reports], indent=2))
    else:
        for report in reports:
            click.echo(_describe(report))
    if any(_troubled(r) for report in reports for r in report.replicas):
        sys.exit(1)


def _targets(db_path: Path | None, urls: tuple[str, ...], config_path: Path | None) -> list[Target]:
    """The databases named, or those of -c, REPLICATOR_DB/REPLICATOR_URL, REPLICATOR_CONFIG, /etc/replicator.yml."""
    from replicator.config import read_config, resolve
    from replicator.storage import open_client

    if db_path is not None and config_path is None:
        return [(db_path, lambda: [open_client(u) for u in urls])]
    config = read_config(config_path) if config_path is not None else resolve(None, (), None, {})
    targets: list[Target] = [(d.path, d.clients) for d in config.databases]
    for found in config.directories:
        targets += _found(found)
    return targets


def _in_directory(directory: Path, urls: tuple[str, ...], pattern: str, recursive: bool) -> list[Target]:
    from replicator.config import DirectoryConfig, Settings

    return _found(DirectoryConfig(directory, list(urls), Settings(), pattern, recursive))


def _found(config: DirectoryConfig) -> list[Target]:
    """Every database in a directory now, each with its replicas' URLs under the directory's."""
    from replicator.directory import scan

    return [(p, config.database(p).clients) for p in scan(config)]


def _troubled(replica: ReplicaStatus) -> bool:
    unread = replica.generation is None and replica.last_error is not None
    return replica.stalled_since is not None or replica.refused is not None or unread


def _describe(report: DatabaseStatus) -> str:
    from replicator.history import format_time

    how = f"running (pid {report.pid})" if report.running else "not running (read offline)"
    where = "no generation yet" if report.generation is None else f"generation {report.generation:016x}"
    lines = [f"{report.database}: {how}, {where}, txid {report.txid if report.txid is not None else '-'}"]
    if report.wal_bytes is not None:
        lines[0] += f", WAL {human_bytes(report.wal_bytes)}"
    if report.last_error:
        lines.append(f"  last error: {report.last_error}")
    now = time.time()
    for r in report.replicas:
        at = "nothing restorable" if r.generation is None else f"generation {r.generation:016x}, txid {r.txid}"
        parts = [at]
        if r.lag_seconds is not None:
            parts.append(f"lag {r.lag_seconds:.1f}s")
        if r.backlog_objects is not None and r.backlog_bytes is not None:
            parts.append(f"backlog {r.backlog_objects} objects ({human_bytes(r.backlog_bytes)})")
        if r.last_upload is not None:
            parts.append(f"last upload {max(0.0, now - r.last_upload):.1f}s ago")
        lines.append(f"  {r.url}: {', '.join(parts)}")
        if r.restorable_from_us is not None and r.restorable_to_us is not None and r.window_seconds is not None:
            lines.append(
                f"    restorable from {format_time(r.restorable_from_us)} to {format_time(r.restorable_to_us)} "
                f"({_span(r.window_seconds)})"
            )
        if r.stalled_since is not None:
            lines.append(f"    STALLED for {now - r.stalled_since:.0f}s ({r.stalls} stalls so far)")
        if r.refused:
            lines.append(f"    REFUSED: {r.refused}")
        if r.last_error:
            ago = "" if r.last_error_at is None else f" ({_span(max(0.0, now - r.last_error_at))} ago)"
            lines.append(f"    last error{ago}: {r.last_error}")
    return "\n".join(lines)


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
