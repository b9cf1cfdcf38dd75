"""What several commands share: logging, where a replica comes from, and the parameter types."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click

from replicator.storage import ReplicaClient

_RECORD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and what the call site added (`extra=`: the
    database, the replica, and `event` for the lines that mark one, such as replica_stalled)."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line: dict[str, object] = {
            "time": moment.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line |= {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


LOG_FORMATS = ("text", "json")


def setup_logging(verbose: bool, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def open_source(source: str, config: Path | None) -> tuple[ReplicaClient, Path | None]:
    """The replica a command reads: SOURCE is a replica URL, or with -c a database path from the config.

    Returns the client and, with -c, the database path (restore's default output).
    """
    from replicator.storage import open_client

    if config is None:
        return open_client(source), None
    from replicator.config import load_config  # pulls in the shipper (numpy): only when a config is used
    from replicator.errors import ConfigError

    wanted = Path(source).absolute()
    for db in load_config(config):
        if db.path.absolute() == wanted:
            return db.client(db.replicas[0]), db.path
    raise ConfigError(f"{source} is not a database in {config}")


def human_bytes(size: int) -> str:
    """612 B, 4.1 kB, 12.3 MB, 1.1 GB: for tables and messages (JSON keeps exact bytes)."""
    value, unit = float(size), "B"
    for bigger in ("kB", "MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Timestamp(click.ParamType):
    """RFC 3339 with a zone (2026-11-21T14:03:00Z, 2026-11-21T15:03:00+01:00) -> microseconds since the epoch."""

    name = "TIMESTAMP"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        try:
            moment = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            self.fail(f"{text!r} is not an RFC 3339 time such as 2026-11-21T14:03:00Z", param, ctx)
        if moment.tzinfo is None:
            self.fail(f"{text!r} has no time zone: add Z (UTC) or an offset such as +01:00", param, ctx)
        return (moment - _EPOCH) // timedelta(microseconds=1)  # exact: float seconds can lose the last microsecond


class Txid(click.ParamType):
    """A transaction id as the listings show it: decimal, or hex with 0x."""

    name = "TXID"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            number = int(str(value), 0)
        except ValueError:
            self.fail(f"{value!r} is not a transaction id (a number; 0x for hex)", param, ctx)
        if number < 0:
            self.fail("a transaction id is not negative", param, ctx)
        return number


class GenerationId(click.ParamType):
    """A generation id: the 16 hex digits the listings show."""

    name = "GENERATION"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if len(text) != 16 or any(c not in "0123456789abcdef" for c in text):
            self.fail(
                f"{value!r} is not a generation id (16 hex digits, as `replicator generations` shows)", param, ctx
            )
        return int(text, 16)
