"""`replicator verify`: check that a replica restores, from its own bytes; optionally restore it as a drill."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .common import human_bytes, open_source

if TYPE_CHECKING:
    from replicator.verify import Report


@click.command()
@click.argument("source")
@click.option(
    "-c", "--config", type=click.Path(dir_okay=False, path_type=Path), help="SOURCE is a DB path in this config."
)
@click.option("--dir-all", is_flag=True, help="SOURCE is a `replicate --dir` base URL: verify every database under it.")
@click.option("--drill", is_flag=True, help="Also restore the latest state into a temporary file, and time it.")
@click.option("--sql", "sentinel", metavar="QUERY", help="With --drill: a query the restored database must answer.")
@click.option("--parallelism", type=click.IntRange(1, 64), default=8, show_default=True, help="Concurrent downloads.")
@click.option(
    "--scratch",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to keep a generation's segments while they are checked. [default: the system's temp dir]",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify(
    source: str,
    *,
    config: Path | None,
    dir_all: bool,
    drill: bool,
    sentinel: str | None,
    parallelism: int,
    scratch: Path | None,
    as_json: bool,
) -> None:
    """Check a replica: every object read and verified, every chain unbroken, every compacted segment
    rebuilt from what it stands for, and the restorable window of each generation.

    \b
      replicator verify s3://bucket/app
      replicator verify s3://bucket/app --drill --sql "SELECT count(*) FROM users"
      replicator verify --dir-all s3://bucket/tenants --json

    Exit codes: 0 healthy, 1 problems found (each is listed), 3 the replica cannot be read.
    It downloads the whole replica (segments wait on local disk while their generation is checked).
    """
    from replicator.directory import replicated_under
    from replicator.storage import open_client
    from replicator.verify import verify as check

    if sentinel is not None:
        drill = True
    if dir_all:
        if config is not None:
            raise click.UsageError("--dir-all takes a base URL, not -c")
        from replicator.config import replica_url_for

        base = open_client(source)
        clients = [open_client(replica_url_for(source, name)) for name in replicated_under(base)]
    else:
        clients = [open_source(source, config)[0]]
    options: dict[str, Any] = {"scratch": scratch, "parallelism": parallelism, "drill": drill, "sentinel": sentinel}
    reports = [check(client, **options) for client in clients]
    if as_json:
        click.echo(json.dumps([_as_json(r) for r in reports] if dir_all else _as_json(reports[0]), indent=2))
    else:
        for report in reports:
            _print(report)
    if not all(r.healthy for r in reports):
        sys.exit(1)


def _print(report: Report) -> None:
    from replicator.history import format_time

    problems = [f for f in report.findings if f.kind.problem]
    click.echo(f"{report.url}: {'healthy' if not problems else f'{len(problems)} problems'}")
    for w in report.windows:
        click.echo(
            f"  generation {w.generation:016x} restores txids {w.first_txid}..{w.last_txid}, "
            f"{format_time(w.first_time_us)} to {format_time(w.last_time_us)} "
            f"({w.objects} objects, {human_bytes(w.bytes)})"
        )
    for finding in report.findings:
        label = "problem" if finding.kind.problem else "note"
        click.echo(f"  {label}: {finding.kind.value} {finding.key}: {finding.detail}".replace("  :", ":"))
    if report.drill is not None:
        d = report.drill
        sentinel = "" if d.sentinel is None else f"; the query returned {d.sentinel!r}"
        click.echo(f"  drill: restored txid {d.txid} of generation {d.generation:016x} in {d.seconds:.2f}s{sentinel}")
    click.echo(f"  read {report.objects_read} objects, {human_bytes(report.bytes_read)}")


def _as_json(report: Report) -> dict[str, Any]:
    from replicator.history import format_time

    drill = report.drill
    return {
        "url": report.url,
        "healthy": report.healthy,
        "generations": [
            {
                "generation": f"{w.generation:016x}",
                "first_txid": w.first_txid,
                "last_txid": w.last_txid,
                "from": format_time(w.first_time_us),
                "to": format_time(w.last_time_us),
                "objects": w.objects,
                "bytes": w.bytes,
            }
            for w in report.windows
        ],
        "findings": [
            {"kind": f.kind.value, "problem": f.kind.problem, "key": f.key, "detail": f.detail} for f in report.findings
        ],
        "objects_read": report.objects_read,
        "bytes_read": report.bytes_read,
        "drill": None
        if drill is None
        else {
            "generation": f"{drill.generation:016x}",
            "txid": drill.txid,
            "seconds": round(drill.seconds, 3),
            "sentinel": None if drill.sentinel is None else [list(map(str, r)) for r in drill.sentinel],
        },
    }
