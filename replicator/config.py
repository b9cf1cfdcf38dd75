"""Settings from the command line or a YAML file: parsing and validation only."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from . import segment
from .errors import ConfigError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: object) -> float:
    """'1s', '100ms', '5m', '24h', '1h30m' (or a number of seconds) -> seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        if not math.isfinite(text) or text < 0:
            raise ConfigError(f"invalid duration {text!r}")
        return float(text)
    if not isinstance(text, str):
        raise ConfigError(f"invalid duration {text!r}; use e.g. 100ms, 1s, 5m, 24h")
    s = text.strip().lower()
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ConfigError(f"invalid duration {text!r}; use e.g. 100ms, 1s, 5m, 24h")
    return total


@dataclass(frozen=True, slots=True)
class Settings:
    """How one database is replicated (docs/LIFECYCLE.md has the table)."""

    sync_interval: float = 1.0  # at most one segment (one PUT per replica) per interval while busy
    snapshot_interval: float = 24 * 3600.0
    retention: float = 24 * 3600.0
    min_checkpoint_pages: int = 1000  # our PASSIVE checkpoint runs once the WAL holds this many frames
    poll_interval: float = 0.025
    shutdown_timeout: float = 30.0
    shutdown_grace: float = 2.0  # after SIGTERM, how long we still follow an app that has the database open
    compression_level: int = segment.DEFAULT_LEVEL
    lock_timeout_ms: int = 100  # longest we wait for, or hold off, the app's writers
    verify_interval: float = 30.0  # while uploading, how often a replica is probed for the snapshot we build on


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    path: Path
    replicas: list[str]
    settings: Settings


_SETTING_KEYS = {
    "sync-interval": "sync_interval",
    "snapshot-interval": "snapshot_interval",
    "retention": "retention",
    "min-checkpoint-pages": "min_checkpoint_pages",
    "shutdown-timeout": "shutdown_timeout",
    "shutdown-grace": "shutdown_grace",
    "compression-level": "compression_level",
    "verify-interval": "verify_interval",
}
_DURATIONS = {
    "sync_interval",
    "snapshot_interval",
    "retention",
    "shutdown_timeout",
    "shutdown_grace",
    "poll_interval",
    "verify_interval",
}


def _whole_number(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        raise ConfigError(f"{name.replace('_', '-')} must be a whole number, not {value!r}")
    return int(value)


def make_settings(values: dict[str, Any], base: Settings | None = None) -> Settings:
    """Settings from option names (dashes or underscores), durations as text or seconds."""
    known = {f.name for f in fields(Settings)}
    changes: dict[str, Any] = {}
    for raw, value in values.items():
        name = _SETTING_KEYS.get(raw, raw.replace("-", "_"))
        if name not in known:
            raise ConfigError(f"unknown setting {raw!r}")
        if value is None:
            continue
        changes[name] = parse_duration(value) if name in _DURATIONS else _whole_number(name, value)
    settings = Settings(**{**{f.name: getattr(base or Settings(), f.name) for f in fields(Settings)}, **changes})
    if min(settings.sync_interval, settings.retention, settings.snapshot_interval, settings.verify_interval) <= 0:
        raise ConfigError("sync-interval, snapshot-interval, retention and verify-interval must be positive")
    if settings.min_checkpoint_pages < 1:
        raise ConfigError("min-checkpoint-pages must be at least 1")
    return settings


def load_config(path: Path) -> list[DatabaseConfig]:
    """The databases of a YAML file:

    dbs:
      - path: /data/app.db
        replicas: [s3://bucket/app, /backups/app]
        sync-interval: 1s        # any setting; top-level settings apply to every database
    """
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("dbs"), list) or not data["dbs"]:
        raise ConfigError(f"config {path} needs a non-empty 'dbs' list")
    shared = make_settings({k: v for k, v in data.items() if k != "dbs"})
    result = []
    for i, entry in enumerate(data["dbs"]):
        if not isinstance(entry, dict) or "path" not in entry:
            raise ConfigError(f"config {path}: dbs[{i}] needs a 'path'")
        replicas = entry.get("replicas") or []
        replicas = [r["url"] if isinstance(r, dict) else r for r in replicas]
        if not replicas or not all(isinstance(r, str) for r in replicas):
            raise ConfigError(f"config {path}: dbs[{i}] needs a list of replica URLs")
        own = {k: v for k, v in entry.items() if k not in ("path", "replicas")}
        result.append(DatabaseConfig(Path(entry["path"]), replicas, make_settings(own, shared)))
    check_one_database_per_replica(result, f"config {path}")
    return result


def check_one_database_per_replica(databases: list[DatabaseConfig], where: str) -> None:
    """Refuse a database listed twice, or one replica URL given to two databases (a copy-pasted entry)."""
    paths: dict[Path, int] = {}
    urls: dict[str, int] = {}
    for i, db in enumerate(databases):
        resolved = db.path.resolve()
        if resolved in paths:
            raise ConfigError(f"{where}: dbs[{i}] repeats the database of dbs[{paths[resolved]}] ({db.path})")
        paths[resolved] = i
        for url in db.replicas:
            if urls.get(url, i) != i:
                raise ConfigError(
                    f"{where}: dbs[{urls[url]}] and dbs[{i}] share the replica {url}; each database needs its own"
                )
            urls[url] = i
