"""`replicator generations | snapshots | wal`: what a replica holds, as tables or JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .common import human_bytes, open_source


def _source_options(f: Any) -> Any:
    f = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(f)
    f = click.option(
        "-c", "--config", type=click.Path(dir_okay=False, path_type=Path), help="SOURCE is a DB path in this config."
    )(f)
    return click.argument("source")(f)


def _listing(source: str, config: Path | None) -> Any:
    from replicator.rebuild import list_replica

    client, _ = open_source(source, config)
    listing = list_replica(client)
    if listing.foreign:
        click.echo(
            f"warning: {len(listing.foreign)} objects are not ours (e.g. {listing.foreign[0]}); ignored", err=True
        )
    return listing


def _print(rows: list[dict[str, Any]], columns: list[tuple[str, str]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    cells = [[title for title, _ in columns]] + [[str(row[key]) for _, key in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


@click.command()
@_source_options
def generations(source: str, config: Path | None, as_json: bool) -> None:
    """List the generations in a replica (newest last), with their time span and size."""
    from replicator.history import by_generation, format_time, last_write, started
    from replicator.keys import SnapshotKey

    listing = _listing(source, config)
    now_us = time.time_ns() // 1000
    rows = []
    for gen, items in by_generation(listing.sizes).items():
        snaps = [k for k in items if isinstance(k, SnapshotKey)]
        segs = [k for k in items if not isinstance(k, SnapshotKey)]
        times = [k.time_us for k in snaps] + [k.last_time_us for k in segs]
        first_txid = min(k.txid for k in snaps) if snaps else min(k.first_txid for k in segs)
        last_txid = max([k.txid for k in snaps] + [k.last_txid for k in segs])
        began = started(items)
        rows.append(
            {
                "generation": f"{gen:016x}",
                "started": format_time(began) if began is not None else "-",
                "last_write": format_time(last_write(items)),
                "lag_s": round((now_us - last_write(items)) / 1e6, 1),
                "snapshots": len(snaps),
                "segments": len(segs),
                "txids": f"{first_txid}-{last_txid}",
                "bytes": sum(listing.sizes[k] for k in items),
                "restorable": bool(snaps),
                "_order": min(times),
            }
        )
    rows.sort(key=lambda r: (r.pop("_order"), r["generation"]))
    if not as_json:
        for row in rows:
            row["size"] = human_bytes(row["bytes"])
    _print(
        rows,
        [("GENERATION", "generation"), ("STARTED", "started"), ("LAST WRITE", "last_write"), ("LAG (s)", "lag_s"),
         ("SNAPSHOTS", "snapshots"), ("SEGMENTS", "segments"), ("TXIDS", "txids"), ("SIZE", "size")],
        as_json,
    )  # fmt: skip


def _object_rows(
    source: str, config: Path | None, kind: type, describe: Callable[[Any], dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per object of `kind` in the replica, oldest first: its generation, `describe(key)`, its bytes."""
    from replicator.keys import chain_order

    listing = _listing(source, config)
    keys = sorted(
        (k for k in listing.sizes if isinstance(k, kind)), key=lambda k: (chain_order(k), -getattr(k, "level", 0))
    )
    return [{"generation": f"{k.generation:016x}", **describe(k), "bytes": listing.sizes[k]} for k in keys]


@click.command()
@_source_options
def snapshots(source: str, config: Path | None, as_json: bool) -> None:
    """List the snapshots in a replica (oldest first)."""
    from replicator.history import format_time
    from replicator.keys import SnapshotKey

    rows = _object_rows(source, config, SnapshotKey, lambda k: {"txid": k.txid, "time": format_time(k.time_us)})
    if not as_json:
        for row in rows:
            row["size"] = human_bytes(row["bytes"])
    _print(rows, [("GENERATION", "generation"), ("TXID", "txid"), ("TIME", "time"), ("SIZE", "size")], as_json)


@click.command()
@_source_options
def wal(source: str, config: Path | None, as_json: bool) -> None:
    """List the WAL segments in a replica (oldest first): the transactions each one ships.

    Level 0 is a segment as shipped; levels 1 and up are compacted segments (restore uses them to need
    fewer requests; each restores only to its last txid).
    """
    from replicator.history import format_time
    from replicator.keys import SegmentKey

    rows = _object_rows(
        source,
        config,
        SegmentKey,
        lambda k: {
            "first_txid": k.first_txid,
            "last_txid": k.last_txid,
            "level": k.level,
            "time": format_time(k.last_time_us),
        },
    )
    if not as_json:
        for row in rows:
            row["txids"] = f"{row['first_txid']}-{row['last_txid']}"
            row["size"] = human_bytes(row["bytes"])
    columns = [("GENERATION", "generation"), ("TXIDS", "txids"), ("LEVEL", "level"), ("TIME", "time"), ("SIZE", "size")]
    _print(rows, columns, as_json)
