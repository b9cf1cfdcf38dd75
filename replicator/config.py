"""Settings from the command line, the environment or a YAML file (ours or litestream.yml): parsing and validation."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import yaml

from . import segment
from .errors import ConfigError
from .storage.base import ReplicaClient, ReplicaOptions

log = logging.getLogger(__name__)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)?")
_SIZE_UNITS = {
    None: 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}  # fmt: skip


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


def parse_size(text: object) -> int:
    """'512MB', '1GB', '2GiB' (or a number of bytes) -> bytes."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    m = _SIZE.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if m is None:
        raise ConfigError(f"invalid size {text!r}; use e.g. 512MB, 1GB, 2GiB")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


# Compaction levels, seconds (docs/CONFIG.md): with 1 s segments, a restore of the latest state takes ~20
# objects on average over a day, any point of it at most ~40 (tests/test_compaction.py).
DEFAULT_COMPACTION: tuple[float, ...] = (10.0, 60.0, 600.0, 3600.0, 6 * 3600.0)
MAX_LEVELS = 9


def parse_compaction(value: object) -> tuple[float, ...]:
    """'10s,1m,1h' or a list of durations; 'none' (or an empty list) turns it off.

    Each interval must be a whole multiple of the one below, so a window of one level never straddles two of
    the level above (compaction.py rule 4).
    """
    if isinstance(value, str) and value.strip().lower() in ("none", "off", ""):
        return ()
    if isinstance(value, str):
        items: list[object] = [i for i in re.split(r"[\s,]+", value) if i]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ConfigError(f"invalid compaction {value!r}; use e.g. 10s,1m,1h or none")
    intervals = tuple(parse_duration(i) for i in items)
    if len(intervals) > MAX_LEVELS:
        raise ConfigError(f"compaction takes at most {MAX_LEVELS} levels, not {len(intervals)}")
    micros = [round(i * 1e6) for i in intervals]
    for below, above in zip([0, *micros], micros, strict=False):
        if above <= below or (below and above % below):
            raise ConfigError(
                f"compaction intervals must grow, each a whole multiple of the one below: {value!r} is not"
            )
    return intervals


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
    spool_limit: int = 10**9  # bytes all spools of the process hold together (spool.py rule 2; the largest given)
    compaction: tuple[float, ...] = DEFAULT_COMPACTION  # seconds: each level's window (compaction.py rule 4)
    stall_after: float | None = None  # a replica pending this long with no upload is stalled (watchdog.py)

    @property
    def stall_seconds(self) -> float:
        """`stall_after`, or its default: ten sync intervals, at least 10 s."""
        return self.stall_after if self.stall_after is not None else max(10 * self.sync_interval, 10.0)


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    path: Path
    replicas: list[str]  # URLs
    settings: Settings
    options: dict[str, ReplicaOptions] = field(default_factory=dict)  # per URL, from a config file

    def client(self, url: str) -> ReplicaClient:
        from .storage import open_client  # boto3 only when S3 is used

        return open_client(url, options=self.options.get(url))

    def clients(self) -> list[ReplicaClient]:
        return [self.client(u) for u in self.replicas]


@dataclass(frozen=True, slots=True)
class DirectoryConfig:
    """Every database in a directory (directory.py finds them): each one's replica is a URL + its relative path."""

    dir: Path
    replicas: list[str]  # base URLs
    settings: Settings
    pattern: str = "*.db"
    recursive: bool = False
    options: dict[str, ReplicaOptions] = field(default_factory=dict)  # per base URL

    def database(self, path: Path) -> DatabaseConfig:
        """The config of one database found in the directory: `s3://b/tenants` + `a/b.db` -> `s3://b/tenants/a/b.db`."""
        relative = Path(os.path.abspath(path)).relative_to(os.path.abspath(self.dir))
        urls = {base: replica_url_for(base, relative) for base in self.replicas}
        options = {urls[base]: opts for base, opts in self.options.items() if base in urls}
        return DatabaseConfig(path, list(urls.values()), self.settings, options)


def replica_url_for(base: str, relative: Path | str) -> str:
    """A database's own replica URL under a directory's base URL (query options such as ?endpoint= kept)."""
    rel = Path(relative).as_posix().strip("/")
    parts = urlsplit(base)
    if parts.scheme in ("s3", "file"):
        tail = quote(rel) if parts.scheme == "file" else rel  # file URLs are percent-encoded, S3 prefixes raw
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + tail))
    return str(Path(base) / rel)


_SETTING_KEYS = {
    "sync-interval": "sync_interval",
    "snapshot-interval": "snapshot_interval",
    "retention": "retention",
    "min-checkpoint-pages": "min_checkpoint_pages",
    "shutdown-timeout": "shutdown_timeout",
    "shutdown-grace": "shutdown_grace",
    "compression-level": "compression_level",
    "verify-interval": "verify_interval",
    "spool-limit": "spool_limit",
    "compaction": "compaction",
    "stall-after": "stall_after",
}
_DURATIONS = {
    "sync_interval",
    "snapshot_interval",
    "retention",
    "shutdown_timeout",
    "shutdown_grace",
    "poll_interval",
    "verify_interval",
    "stall_after",
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
        if name in _DURATIONS:
            changes[name] = parse_duration(value)
        elif name == "spool_limit":
            changes[name] = parse_size(value)
        elif name == "compaction":
            changes[name] = parse_compaction(value)
        else:
            changes[name] = _whole_number(name, value)
    settings = Settings(**{**{f.name: getattr(base or Settings(), f.name) for f in fields(Settings)}, **changes})
    if min(settings.sync_interval, settings.retention, settings.snapshot_interval, settings.verify_interval) <= 0:
        raise ConfigError("sync-interval, snapshot-interval, retention and verify-interval must be positive")
    if settings.stall_after is not None and settings.stall_after <= 0:
        raise ConfigError("stall-after must be positive")
    if settings.min_checkpoint_pages < 1:
        raise ConfigError("min-checkpoint-pages must be at least 1")
    return settings


DEFAULT_CONFIG = Path("/etc/replicator.yml")

# Litestream's keys (v0.3 and v0.5 litestream.yml) that we honour under our own name.
_LITESTREAM_NAMES = {"shutdown-sync-timeout": "shutdown-timeout", "min-checkpoint-page-count": "min-checkpoint-pages"}
# Litestream's keys we understand but do not honour (yet): one warning names them.
_NOT_HONOURED = {
    "top": {
        "logging", "levels", "l0-retention", "l0-retention-check-interval", "validation",
        "verify-compaction", "heartbeat-url", "heartbeat-interval", "socket", "mcp-addr",
        "shutdown-sync-interval", "retention-check-interval", "validation-interval",
    },
    "db": {
        "meta-path", "monitor-interval", "checkpoint-interval", "max-checkpoint-page-count", "busy-timeout",
        "truncate-page-n", "max-sync-wal-bytes", "restore-if-db-not-exists",
    },
    "replica": {
        "name", "retention-check-interval", "validation-interval", "max-sync-ltx-files", "auto-recover",
        "storage-class", "part-size", "concurrency", "sign-payload", "require-content-md5",
    },
}  # fmt: skip
# Keys whose meaning we cannot deliver: ignoring them would store data the operator meant to protect.
_REFUSED = {"age", "sse-customer-key", "sse-customer-key-path", "sse-customer-algorithm", "sse-kms-key-id"}
# force-path-style: we always address a custom endpoint by path, and AWS answers both styles.
_S3_LOCATION = {"type", "url", "bucket", "path", "endpoint", "region", "skip-verify", "force-path-style"}
_CREDENTIALS = {"access-key-id", "secret-access-key"}
_REPLICA_SETTINGS = {"sync-interval", "snapshot-interval", "retention"}  # per replica in Litestream, per database here
_ENV = re.compile(r"\$\{(\w+)\}|\$(\w+)")


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """What a config file says: the databases, the directories of databases, and the app to supervise."""

    databases: list[DatabaseConfig]
    exec_command: str | None
    directories: list[DirectoryConfig] = field(default_factory=list)
    metrics_addr: str | None = None  # where to serve Prometheus metrics (metrics.py); Litestream's `addr:`


def load_config(path: Path, *, expand_env: bool = True) -> list[DatabaseConfig]:
    return read_config(path, expand_env=expand_env).databases


def read_config(path: Path, *, expand_env: bool = True) -> ConfigFile:
    """A YAML config: ours, or a Litestream v0.3 / v0.5 litestream.yml as it is.

    dbs:
      - path: /data/app.db
        replicas: [s3://bucket/app, /backups/app]   # or Litestream's {type: s3, bucket, path, ...}; or replica:
        sync-interval: 1s        # any setting; top-level settings apply to every database

    `$VAR` and `${VAR}` are replaced by the environment's value (empty if unset), as Litestream does,
    unless `expand_env` is False. Unknown keys are an error naming the file and line.
    """
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    if expand_env:
        text = expand_environment(text)
    try:
        data = yaml.load(text, Loader=_Loader)  # a SafeLoader that also records line numbers
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, _Mapping) or not isinstance(data.get("dbs"), list) or not data["dbs"]:
        raise ConfigError(f"config {path} needs a non-empty 'dbs' list")
    reader = _Reader(path)
    shared, s3_defaults, exec_command = reader.top(data)
    databases: list[DatabaseConfig] = []
    directories: list[DirectoryConfig] = []
    for i, entry in enumerate(data["dbs"]):
        if isinstance(entry, _Mapping) and "dir" in entry:
            directories.append(reader.directory(i, entry, shared, s3_defaults))
        else:
            databases.append(reader.database(i, entry, shared, s3_defaults))
    reader.warn()
    check_one_database_per_replica(databases, f"config {path}")
    addr = data.get("addr")
    if addr is not None and not isinstance(addr, str):
        raise ConfigError(f"config {path}: addr must be HOST:PORT (a string such as ':9090')")
    return ConfigFile(databases, exec_command, directories, addr or None)


def expand_environment(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Litestream's expansion: $VAR and ${VAR} become the variable's value, or nothing if it is unset."""
    env = os.environ if environ is None else environ

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return str(os.getpid()) if name == "PID" else env.get(name, "")

    return _ENV.sub(value, text)


class _Mapping(dict[str, Any]):
    """A YAML mapping that knows the line of each of its keys."""

    lines: dict[str, int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> _Mapping:
    mapping = _Mapping(cast(dict[str, Any], loader.construct_mapping(node, deep=True)))
    mapping.lines = {str(key.value): key.start_mark.line + 1 for key, _ in node.value}
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Reader:
    """Reads one file's mappings, collecting the keys it does not honour for a single warning."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ignored: list[str] = []

    def _check_keys(self, mapping: _Mapping, where: str, allowed: set[str], level: str) -> None:
        for key in mapping:
            line = mapping.lines.get(key, 0)
            if key in _REFUSED:
                raise ConfigError(
                    f"config {self.path} line {line}: {where}{key} is not supported (replicator does not encrypt "
                    "replicas yet); remove it only if unencrypted replicas are acceptable"
                )
            if key in _NOT_HONOURED[level]:
                self.ignored.append(f"{where}{key} (line {line})")
            elif key not in allowed:
                raise ConfigError(
                    f"config {self.path} line {line}: unknown setting {key!r} in {where or 'the top level'}"
                )

    def warn(self) -> None:
        if self.ignored:
            log.warning("config %s: not honoured (yet), ignored: %s", self.path, ", ".join(self.ignored))

    def top(self, data: _Mapping) -> tuple[Settings, dict[str, Any], str | None]:
        allowed = {"dbs", "exec", "addr", "snapshot", *_SETTING_KEYS, *_LITESTREAM_NAMES, *_S3_LOCATION, *_CREDENTIALS}
        self._check_keys(data, "", allowed - {"type", "url", "bucket", "path"}, "top")
        values = {k: v for k, v in data.items() if k in _SETTING_KEYS or k in _LITESTREAM_NAMES}
        snapshot = data.get("snapshot")
        if snapshot is not None:  # v0.5: snapshot: {interval, retention}
            if not isinstance(snapshot, _Mapping):
                raise ConfigError(f"config {self.path}: snapshot must be a mapping of interval and retention")
            self._check_keys(snapshot, "snapshot.", {"interval", "retention"}, "top")
            values |= {f"snapshot-{k}" if k == "interval" else k: v for k, v in snapshot.items()}
        s3_defaults = {k: v for k, v in data.items() if k in (_S3_LOCATION | _CREDENTIALS)}
        exec_command = data.get("exec")
        if exec_command is not None and not isinstance(exec_command, str):
            raise ConfigError(f"config {self.path}: exec must be a command line (a string)")
        return make_settings(_our_names(values)), s3_defaults, exec_command or None

    def directory(self, i: int, entry: _Mapping, shared: Settings, s3_defaults: dict[str, Any]) -> DirectoryConfig:
        """`dir:` (with `pattern:` and `recursive:`), as in Litestream 0.5; replicas as for one database.
        Litestream's `watch:` is accepted: we always pick up new databases."""
        allowed = {"dir", "pattern", "recursive", "watch", "replicas", "replica", *_SETTING_KEYS, *_LITESTREAM_NAMES}
        self._check_keys(entry, f"dbs[{i}].", allowed, "db")
        pattern, recursive = entry.get("pattern", "*.db"), entry.get("recursive", False)
        if not isinstance(pattern, str) or not pattern or "/" in pattern:
            raise ConfigError(f"config {self.path}: dbs[{i}].pattern must be a file name pattern such as '*.db'")
        if not isinstance(recursive, bool):
            raise ConfigError(f"config {self.path}: dbs[{i}].recursive must be true or false")
        one = self.database(i, entry, shared, s3_defaults)
        return DirectoryConfig(one.path, one.replicas, one.settings, pattern, recursive, one.options)

    def database(self, i: int, entry: object, shared: Settings, s3_defaults: dict[str, Any]) -> DatabaseConfig:
        where = f"dbs[{i}]."
        if not isinstance(entry, _Mapping) or ("path" not in entry and "dir" not in entry):
            raise ConfigError(f"config {self.path}: dbs[{i}] needs a 'path' (or a 'dir')")
        if "dir" not in entry:
            allowed = {"path", "replicas", "replica", *_SETTING_KEYS, *_LITESTREAM_NAMES}
            self._check_keys(entry, where, allowed, "db")
        listed = entry.get("replicas") or ([entry["replica"]] if entry.get("replica") else [])
        if not isinstance(listed, list) or not listed:
            raise ConfigError(f"config {self.path}: dbs[{i}] needs a list of replica URLs")
        urls, options, per_replica = [], {}, []
        for j, item in enumerate(listed):
            url, opts, intervals = self.replica(f"{where}replicas[{j}].", item, s3_defaults, i)
            urls.append(url)
            if opts is not None:
                options[url] = opts
            per_replica.append(intervals)
        own = {k: v for k, v in entry.items() if k in _SETTING_KEYS or k in _LITESTREAM_NAMES}
        settings = make_settings(_our_names(own), make_settings(self._merge(per_replica, where), shared))
        return DatabaseConfig(Path(str(entry.get("path") or entry["dir"])), urls, settings, options)

    def replica(
        self, where: str, item: object, defaults: dict[str, Any], i: int
    ) -> tuple[str, ReplicaOptions | None, dict[str, Any]]:
        if isinstance(item, str):
            return item, None, {}
        if not isinstance(item, _Mapping):
            raise ConfigError(f"config {self.path}: dbs[{i}] needs a list of replica URLs")
        self._check_keys(item, where, _S3_LOCATION | _CREDENTIALS | _REPLICA_SETTINGS, "replica")
        settings = {k: v for k, v in item.items() if k in _REPLICA_SETTINGS}
        merged = {**{k: v for k, v in defaults.items() if k not in ("type", "url", "bucket", "path")}, **item}
        credentials = ReplicaOptions(
            access_key_id=_text(merged.get("access-key-id")),
            secret_access_key=_text(merged.get("secret-access-key")),
            skip_verify=merged.get("skip-verify") is True,
        )
        options = credentials if credentials != ReplicaOptions() else None
        if "url" in item:
            if not isinstance(item["url"], str) or not item["url"]:
                raise ConfigError(f"config {self.path}: {where}url must be a replica URL")
            return item["url"], options, settings
        kind = item.get("type", "s3" if "bucket" in item else "file")
        if kind == "file":
            if not isinstance(item.get("path"), str):
                raise ConfigError(f"config {self.path}: {where}path is needed for a file replica")
            return item["path"], None, settings
        if kind != "s3":
            raise ConfigError(f"config {self.path}: {where}type {kind!r} is not supported; use s3 or file")
        if not isinstance(item.get("bucket"), str) or not item["bucket"]:
            raise ConfigError(f"config {self.path}: {where}bucket is needed for an s3 replica")
        query = {k: merged[k] for k in ("endpoint", "region") if merged.get(k)}
        url = f"s3://{item['bucket']}/{str(item.get('path') or '').strip('/')}"
        if query:
            url += "?" + urlencode(query, safe=":/")
        return url, options, settings

    def _merge(self, per_replica: list[dict[str, Any]], where: str) -> dict[str, Any]:
        """Litestream sets intervals per replica; we ship one stream per database: the safe side of each."""
        merged: dict[str, Any] = {}
        for key, pick in (("sync-interval", min), ("snapshot-interval", min), ("retention", max)):
            given = [parse_duration(s[key]) for s in per_replica if key in s]
            if given:
                merged[key] = pick(given)
                if len(set(given)) > 1:
                    log.warning(
                        "config %s: %s differs between replicas; using %gs for all of them (the %s)",
                        self.path,
                        f"{where}{key}",
                        merged[key],
                        "shortest" if pick is min else "longest",
                    )
        return merged


def _our_names(values: dict[str, Any]) -> dict[str, Any]:
    return {_LITESTREAM_NAMES.get(k, k): v for k, v in values.items()}


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


def resolve(
    db_path: Path | None,
    urls: Sequence[str],
    config_path: Path | None,
    flags: Mapping[str, Any],
    *,
    directory: DirectoryConfig | None = None,
    expand_env: bool = True,
    environ: Mapping[str, str] | None = None,
) -> ConfigFile:
    """What `replicate` replicates, from the first of: DB_PATH REPLICA_URL... on the command line; -c FILE;
    REPLICATOR_DB + REPLICATOR_URL; REPLICATOR_CONFIG; /etc/replicator.yml. Settings: a flag beats the
    environment (REPLICATOR_SYNC_INTERVAL...), which beats the file. The app to run: REPLICATOR_EXEC, then the
    file's `exec:` (a --exec flag beats both, in the CLI); the metrics address likewise: REPLICATOR_METRICS_ADDR,
    then the file's `addr:` (--metrics-addr beats both)."""
    env = os.environ if environ is None else environ
    given = {k.replace("_", "-"): v for k, v in flags.items() if v is not None}
    layered = {**settings_from_environment(env), **given}
    exec_command = env.get("REPLICATOR_EXEC") or None
    metrics_addr = env.get("REPLICATOR_METRICS_ADDR") or None
    if config_path is not None and (db_path is not None or urls or directory is not None):
        raise ConfigError("give either -c CONFIG or DB_PATH REPLICA_URL..., not both")
    if directory is not None:
        if not directory.replicas:
            raise ConfigError("give --dir DIR and at least one REPLICA_URL")
        return ConfigFile([], exec_command, [replace(directory, settings=make_settings(layered))], metrics_addr)
    named = (db_path, list(urls)) if db_path is not None or urls else None
    if named is None and config_path is None:
        named = database_from_environment(env)
    if named is not None:
        if named[0] is None or not named[1]:
            raise ConfigError("give DB_PATH and at least one REPLICA_URL")
        databases = [DatabaseConfig(named[0], named[1], make_settings(layered))]
        check_one_database_per_replica(databases, "the command line")
        return ConfigFile(databases, exec_command, metrics_addr=metrics_addr)
    path = config_path or (Path(env["REPLICATOR_CONFIG"]) if env.get("REPLICATOR_CONFIG") else None)
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    if path is None:
        raise ConfigError(
            "nothing to replicate: give DB_PATH REPLICA_URL..., or set REPLICATOR_DB and REPLICATOR_URL, or "
            f"a config file (-c FILE, REPLICATOR_CONFIG, or {DEFAULT_CONFIG})"
        )
    file = read_config(path, expand_env=expand_env)
    databases = [replace(d, settings=make_settings(layered, d.settings)) for d in file.databases]
    directories = [replace(d, settings=make_settings(layered, d.settings)) for d in file.directories]
    return ConfigFile(databases, exec_command or file.exec_command, directories, metrics_addr or file.metrics_addr)


def settings_from_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every setting as an environment variable: REPLICATOR_SYNC_INTERVAL=1s, REPLICATOR_RETENTION=72h, ..."""
    env = os.environ if environ is None else environ
    return {key: env[name] for key in _SETTING_KEYS if (name := env_name(key)) in env and env[name].strip()}


def env_name(setting: str) -> str:
    return "REPLICATOR_" + setting.upper().replace("-", "_")


def database_from_environment(environ: Mapping[str, str] | None = None) -> tuple[Path, list[str]] | None:
    """REPLICATOR_DB and REPLICATOR_URL (several URLs separated by spaces or commas), or None if neither is set."""
    env = os.environ if environ is None else environ
    db = env.get("REPLICATOR_DB", "").strip()
    urls = [u for u in re.split(r"[\s,]+", env.get("REPLICATOR_URL", "")) if u]
    if not db and not urls:
        return None
    if not db or not urls:
        missing = "REPLICATOR_URL" if db else "REPLICATOR_DB"
        raise ConfigError(f"{missing} is not set: REPLICATOR_DB (the database) and REPLICATOR_URL go together")
    return Path(db), urls


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
