"""`replicator replicate`: run beside the app and ship its WAL."""

from __future__ import annotations

import functools
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import click

from .common import LOG_FORMATS, setup_logging


@click.command()
@click.argument("db_path", required=False)
@click.argument("replica_urls", nargs=-1)
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), help="YAML config.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Replicate every database in DIR; each one's replica is REPLICA_URL/its path relative to DIR.",
)
@click.option("--pattern", default="*.db", show_default=True, help="With --dir: which file names are databases.")
@click.option("--recursive", is_flag=True, help="With --dir: look in subdirectories too.")
@click.option("--sync-interval", help="At most one upload per replica per interval while busy. [default: 1s]")
@click.option("--snapshot-interval", help="How often to take a fresh snapshot. [default: 24h]")
@click.option("--retention", help="Point-in-time restore window kept on the replicas. [default: 24h]")
@click.option("--min-checkpoint-pages", type=int, help="Checkpoint once the WAL holds this many pages. [default: 1000]")
@click.option("--shutdown-timeout", help="Longest wait for the final upload on SIGTERM. [default: 30s]")
@click.option(
    "--shutdown-grace",
    help="After SIGTERM, keep following while the app still has the database open, this long. [default: 2s]",
)
@click.option("--verify-interval", help="While uploading, how often each replica is re-checked. [default: 30s]")
@click.option(
    "--spool-limit",
    help="Most the local spool holds for every database together; beyond it, what only unreachable replicas "
    "wait for is dropped (they get a fresh snapshot when back). [default: 1GB]",
)
@click.option(
    "--compaction",
    help="Levels of compacted segments, by the interval each merges (restores then need few requests), or "
    "none. [default: 10s,1m,10m,1h,6h]",
)
@click.option(
    "--stall-after",
    help="A replica that has commits to take and takes none for this long is stalled: a warning, an event, a "
    "metric, and a failing /healthz until it recovers. [default: 10 sync intervals, at least 10s]",
)
@click.option(
    "--metrics-addr",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at /metrics and a health check at /healthz (:9090 is every interface). "
    "[env: REPLICATOR_METRICS_ADDR; config: addr]",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    envvar="REPLICATOR_LOG_FORMAT",
    default="text",
    show_default=True,
    help="json: one object per line (time, level, message, database, replica, event).",
)
@click.option(
    "--takeover",
    is_flag=True,
    help="Replicate even to a replica that belongs to another database (it moved, or replaces that one).",
)
@click.option(
    "--exec",
    "command",
    metavar='"CMD ARGS"',
    help="Run the app as a child: restore a missing database first, then start it, ship all it commits when it "
    "exits, and exit with its code.",
)
@click.option(
    "--no-expand-env",
    "expand_env",
    is_flag=True,
    flag_value=False,
    default=True,
    help="Do not expand $VAR in the config file.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def replicate(
    db_path: str | None,
    replica_urls: tuple[str, ...],
    *,
    config_path: Path | None,
    directory: Path | None,
    pattern: str,
    recursive: bool,
    takeover: bool,
    command: str | None,
    expand_env: bool,
    metrics_addr: str | None,
    log_format: str,
    verbose: bool,
    **options: str | int | None,
) -> None:
    """Tail a database's WAL and ship committed transactions to one or more replicas.

    \b
      replicator replicate /data/app.db s3://bucket/app [/backups/app ...]
      replicator replicate -c replicator.yml          (ours, or a litestream.yml as it is)
      REPLICATOR_DB=/data/app.db REPLICATOR_URL=s3://bucket/app replicator replicate
      replicator replicate --dir /data/tenants s3://bucket/tenants   (a/b.db -> s3://bucket/tenants/a/b.db)

    Runs until SIGTERM or SIGINT, then ships everything committed and exits 0 once every replica has
    proved it holds it (non-zero, naming what is missing, if not). A second replicator of the same database
    is refused, and so is a replica that belongs to another database.

    With --exec, the app runs as our child (the way to run both in one container): a missing database is
    restored first, signals are passed on to the app, and when it exits everything it committed is shipped
    and we exit with its code.
    """
    from replicator.config import DirectoryConfig, Settings, resolve
    from replicator.errors import ReplicatorError
    from replicator.metrics import MetricsServer
    from replicator.process import follow_lifeline
    from replicator.replicate import Replicator
    from replicator.spool import SpoolBudget
    from replicator.store import Store
    from replicator.supervise import Supervisor

    from .main import exit_code

    setup_logging(verbose, log_format)
    if directory is not None:
        urls = [u for u in (db_path, *replica_urls) if u is not None]
        given = DirectoryConfig(directory, urls, Settings(), pattern, recursive)
        resolved = resolve(None, [], config_path, options, directory=given, expand_env=expand_env)
    else:
        path = Path(db_path) if db_path is not None else None
        resolved = resolve(path, replica_urls, config_path, options, expand_env=expand_env)
    command = command or resolved.exec_command
    everything = [*resolved.databases, *resolved.directories]
    budget = SpoolBudget(max((d.settings.spool_limit for d in everything), default=Settings().spool_limit))

    def replicator_in(d: DirectoryConfig) -> Callable[[Path], Replicator]:
        def make(path: Path) -> Replicator:
            one = d.database(path)
            return Replicator(path, one.clients(), one.settings, takeover=takeover, budget=budget)

        return make

    store = Store(
        [
            functools.partial(Replicator, d.path, d.clients(), d.settings, takeover=takeover, budget=budget)
            for d in resolved.databases
        ],
        directories=[(d, replicator_in(d)) for d in resolved.directories],
    )
    metrics_addr = metrics_addr or resolved.metrics_addr
    metrics = MetricsServer(metrics_addr, lambda: [r.report() for r in store.replicators]) if metrics_addr else None
    child_code = 0
    argv = shlex.split(command) if command is not None else None
    if argv == []:
        raise click.UsageError("--exec needs a command")
    if metrics is not None:
        metrics.start()
    try:
        if argv is not None:
            outcome = Supervisor(store, argv).run()
            failures, child_code = outcome.failures, outcome.child_code
        else:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: store.stop())
            follow_lifeline(store.stop)  # run by the API's Replicator: stop when it lets go
            failures = store.run()
    finally:
        if metrics is not None:
            metrics.close()
    for db, exc in failures:
        if isinstance(exc, ReplicatorError):
            click.echo(f"error: {db}: {exc}", err=True)
        else:
            click.echo(f"error: {db}: unexpected {type(exc).__name__}: {exc} (traceback above)", err=True)
    if failures:
        sys.exit(child_code or exit_code(failures[0][1]))
    sys.exit(child_code)
