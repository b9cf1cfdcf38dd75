"""`replicator restore`: rebuild a database from a replica, latest or at a point in time."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import GenerationId, Timestamp, Txid, human_bytes, open_source

if TYPE_CHECKING:
    from replicator.rebuild import RestorePlan
    from replicator.storage import ReplicaClient


@click.command()
@click.argument("source")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Database file to create (a directory with --dir-all)."
)
@click.option(
    "-c",
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Take the replica of SOURCE (a DB path) from this config.",
)
@click.option("--timestamp", type=Timestamp(), help="Restore the state as of this time (RFC 3339 with zone).")
@click.option("--txid", type=Txid(), help="Restore the state as of this transaction id.")
@click.option("--generation", type=GenerationId(), help="Restore from this generation (16 hex digits).")
@click.option("--if-db-not-exists", is_flag=True, help="Do nothing (exit 0) if the output already exists.")
@click.option("--if-replica-exists", is_flag=True, help="Do nothing (exit 0) if the replica holds no data.")
@click.option("--parallelism", type=click.IntRange(1, 64), default=8, show_default=True, help="Concurrent downloads.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (objects, GETs, bytes) and a predicted time from two small reads of the snapshot.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")
@click.option(
    "--dir-all",
    is_flag=True,
    help="SOURCE is a `replicate --dir` base URL: restore every database under it into the directory -o.",
)
def restore(
    source: str,
    *,
    output: Path | None,
    config: Path | None,
    timestamp: int | None,
    txid: int | None,
    generation: int | None,
    if_db_not_exists: bool,
    if_replica_exists: bool,
    parallelism: int,
    dry_run: bool,
    quiet: bool,
    dir_all: bool,
) -> None:
    """Rebuild a database from a replica: its latest state, or as of --timestamp / --txid.

    \b
      replicator restore s3://bucket/app -o /data/app.db
      replicator restore --timestamp 2026-11-21T14:03:00Z s3://bucket/app -o /tmp/before.db
      replicator restore -c replicator.yml /data/app.db --if-db-not-exists --if-replica-exists
      replicator restore --dir-all s3://bucket/tenants -o /data/tenants

    The output appears only when it is complete and has passed PRAGMA integrity_check. A restore of the
    latest state also leaves .NAME-replicator/ beside it, so that `replicate` continues its generation
    instead of uploading a new snapshot (docs/RESTORE.md).
    """
    from replicator import rebuild as lib
    from replicator.errors import ReplicatorError

    if timestamp is not None and txid is not None:
        raise click.UsageError("give --timestamp or --txid, not both")
    if dir_all:
        if output is None or config is not None or dry_run or None not in (timestamp, txid, generation):
            raise click.UsageError("--dir-all takes SOURCE -o DIR (the latest state of each database)")
        _restore_directory(source, output, parallelism, if_db_not_exists, quiet)
        return
    client, configured = open_source(source, config)
    output = output or configured
    if output is None and not dry_run:
        raise click.UsageError("give -o OUTPUT (or -c CONFIG with a database path)")
    say = (lambda message: None) if quiet else (lambda message: click.echo(message, err=True))
    target = {"generation": generation, "txid": txid, "timestamp_us": timestamp}
    try:
        if dry_run:
            _dry_run(
                client,
                output,
                parallelism=parallelism,
                if_db_not_exists=if_db_not_exists,
                if_replica_exists=if_replica_exists,
                target=target,
                say=say,
            )
            return
        assert output is not None
        show_bar = not quiet and sys.stderr.isatty()
        with click.progressbar(
            length=0, label="restoring", file=sys.stderr, show_pos=False, hidden=not show_bar
        ) as bar:
            lock = threading.Lock()

            def progress(n: int, total: int) -> None:
                with lock:
                    bar.length = total
                    bar.update(n)

            result = lib.restore(
                client,
                output,
                parallelism=parallelism,
                if_db_not_exists=if_db_not_exists,
                if_replica_exists=if_replica_exists,
                progress=progress,
                **target,
            )
    except lib.ReplicaEmpty as exc:
        raise ReplicatorError(f"{client.url}: {exc}; use --if-replica-exists to make that a success") from None
    _say_foreign(client.url, result.foreign, say)
    if result.skipped is lib.Skipped.DATABASE_EXISTS:
        say(f"{output} exists; nothing to do (--if-db-not-exists)")
    elif result.skipped is lib.Skipped.REPLICA_EMPTY:
        say(f"no replica data at {client.url}; nothing restored (--if-replica-exists)")
    else:
        assert result.plan is not None
        say(f"restored {output}: {_summary(result.plan, result.bytes)} in {result.seconds:.1f}s")


def _summary(plan: RestorePlan, total: int) -> str:
    from replicator.history import format_time

    last = plan.segments[-1].last_time_us if plan.segments else plan.snapshot.time_us
    return (
        f"generation {plan.generation:016x}, txid {plan.txid} (as of {format_time(last)}), "
        f"{len(plan.objects)} objects, {human_bytes(total)}"
    )


def _say_foreign(url: str, foreign: Sequence[str], say: Callable[[str], None]) -> None:
    if foreign:
        say(f"warning: {len(foreign)} objects in {url} are not ours (e.g. {foreign[0]}); ignored")


def _dry_run(
    client: ReplicaClient,
    output: Path | None,
    *,
    parallelism: int,
    if_db_not_exists: bool,
    if_replica_exists: bool,
    target: dict[str, int | None],
    say: Callable[[str], None],
) -> None:
    """What a restore would read, and how long it should take, without writing anything."""
    from replicator import rebuild as lib

    if output is not None and if_db_not_exists and lib.output_exists(output):
        say(f"{output} exists; nothing to do (--if-db-not-exists)")
        return
    listing = lib.list_replica(client)
    _say_foreign(client.url, listing.foreign, say)
    if not listing.sizes and if_replica_exists:
        say(f"no replica data at {client.url}; nothing restored (--if-replica-exists)")
        return
    plan = lib.plan_restore(listing.objects, sizes=listing.sizes, now_us=time.time_ns() // 1000, **target)
    click.echo(f"would restore {_summary(plan, listing.bytes_of(plan))}")
    click.echo(f"  snapshot {plan.snapshot.key} ({listing.sizes[plan.snapshot]} bytes)")
    for seg in plan.segments:
        click.echo(f"  segment  {seg.key} ({listing.sizes[seg]} bytes)")
    guess = lib.predict(client, plan, parallelism)
    click.echo(
        f"{guess.gets} GETs, {human_bytes(guess.bytes)}; predicted {guess.seconds:.2f}s at parallelism "
        f"{parallelism} (measured now: {guess.latency_s * 1000:.0f} ms a request, "
        f"{guess.bandwidth / 1e6:.0f} MB/s a stream; integrity_check over {human_bytes(guess.database_bytes)})"
    )


def _restore_directory(source: str, output: Path, parallelism: int, if_db_not_exists: bool, quiet: bool) -> None:
    from replicator.directory import restore_all
    from replicator.errors import ReplicatorError

    started = time.monotonic()
    done = restore_all(source, output, parallelism=parallelism, if_db_not_exists=if_db_not_exists)
    for name, exc in done.failed:
        click.echo(f"error: {name}: {exc}", err=True)
    if not quiet:
        click.echo(
            f"restored {len(done.restored)} databases into {output} in {time.monotonic() - started:.1f}s"
            + (f"; {len(done.skipped)} existed already" if done.skipped else ""),
            err=True,
        )
    if done.failed:
        raise ReplicatorError(f"{len(done.failed)} of {len(done.failed) + len(done.restored)} databases failed")
