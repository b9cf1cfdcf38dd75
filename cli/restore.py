"""`replicator restore`: rebuild a database from a replica, latest or at a point in time."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import click

from .common import GenerationId, Timestamp, Txid, human_bytes, open_source


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
    from replicator import restore as lib
    from replicator.errors import ReplicatorError
    from replicator.history import format_time

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
    if output is not None and if_db_not_exists and lib.output_exists(output):
        say(f"{output} exists; nothing to do (--if-db-not-exists)")
        return
    if output is not None and not dry_run:
        lib.check_output(output.absolute())

    listing = lib.list_replica(client)
    if listing.foreign:
        say(
            f"warning: {len(listing.foreign)} objects in {client.url} are not ours (e.g. {listing.foreign[0]}); ignored"
        )
    if not listing.sizes and if_replica_exists:
        say(f"no replica data at {client.url}; nothing restored (--if-replica-exists)")
        return
    try:
        plan = lib.plan_restore(
            listing.objects,
            sizes=listing.sizes,
            generation=generation,
            txid=txid,
            timestamp_us=timestamp,
            now_us=time.time_ns() // 1000,
        )
    except lib.ReplicaEmpty as exc:
        raise ReplicatorError(f"{client.url}: {exc}; use --if-replica-exists to make that a success") from None
    total = listing.bytes_of(plan)
    last = plan.segments[-1].last_time_us if plan.segments else plan.snapshot.time_us
    summary = (
        f"generation {plan.generation:016x}, txid {plan.txid} (as of {format_time(last)}), "
        f"{len(plan.objects)} objects, {human_bytes(total)}"
    )
    if dry_run:
        click.echo(f"would restore {summary}")
        click.echo(f"  snapshot {plan.snapshot.key} ({listing.sizes[plan.snapshot]} bytes)")
        for seg in plan.segments:
            click.echo(f"  segment  {seg.key} ({listing.sizes[seg]} bytes)")
        guess = lib.predict(client, plan, parallelism)
        click.echo(
            f"{guess.gets} GETs, {human_bytes(guess.bytes)}; predicted {guess.seconds:.2f}s at parallelism "
            f"{parallelism} (measured now: {guess.latency_s * 1000:.0f} ms a request, "
            f"{guess.bandwidth / 1e6:.0f} MB/s a stream; integrity_check over {human_bytes(guess.database_bytes)})"
        )
        return

    assert output is not None
    started = time.monotonic()
    show_bar = not quiet and sys.stderr.isatty()
    with click.progressbar(
        length=total, label="restoring", file=sys.stderr, show_pos=False, hidden=not show_bar
    ) as bar:
        lock = threading.Lock()

        def progress(n: int) -> None:
            with lock:
                bar.update(n)

        digest = lib.apply_plan(client, plan, output, parallelism=parallelism, progress=progress)
    if timestamp is None and txid is None and generation is None:
        lib.leave_state(output, plan, digest)  # `replicate` continues from here instead of a new snapshot
    say(f"restored {output}: {summary} in {time.monotonic() - started:.1f}s")


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
