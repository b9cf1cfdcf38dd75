"""`replicator wait`: the durability barrier, for a shell script or any language."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.command()
@click.argument("db_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--timeout", type=click.FloatRange(min=0), help="Give up after this many seconds (exit 5).")
@click.option("--txid", type=click.IntRange(min=0), help="Wait for this txid of the current generation instead.")
def wait(db_path: Path, *, timeout: float | None, txid: int | None) -> None:
    """Return once everything committed to DB_PATH so far is durably on every replica.

    \b
      sqlite3 /data/app.db "INSERT INTO signups ..." && replicator wait /data/app.db --timeout 10

    Asks the replicator running for the database (over its control socket in the state directory); it rides
    the normal upload cadence and forces no extra upload. Prints where the replicas are.
    Exit codes: 0 durable, 5 timed out (still being shipped), 1 no replicator runs for it, or it stopped.
    """
    from replicator.api import wait as barrier

    started = time.monotonic()
    position = barrier(db_path, txid=txid, timeout=timeout)
    click.echo(f"durable on every replica: {position} ({time.monotonic() - started:.3f}s)")
