"""The databases of a directory: finding them (`replicate --dir`, `dir:` in a config file), and restoring
them all (`restore --dir-all`).

Rules:
1. A database is a file whose name matches the pattern, directly in the directory or, if recursive, in
   any subdirectory, that starts with SQLite's header. An empty file is not one yet (SQLite writes the
   header with the first transaction); a file of other content is skipped with one warning.
2. Never ours or SQLite's own: -wal, -shm and -journal files, and our state directories
   (`.NAME-replicator/`) and their spools, are never databases and never searched.
3. A database's place under the directory is its replica's place under each base URL
   (config.DirectoryConfig.database): the relative path is the tenant's name, so it must be stable.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Callable, Container, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import keys
from .config import DirectoryConfig, replica_url_for
from .errors import ReplicatorError
from .ownership import OWNER_KEY
from .rebuild import RestorePlan, restore
from .sqlite import SQLITE_MAGIC
from .storage import ReplicaClient, check_key

log = logging.getLogger(__name__)

_SQLITE_FILES = ("-wal", "-shm", "-journal")
_warned: set[Path] = set()


def is_state_dir(name: str) -> bool:
    return name.startswith(".") and name.endswith("-replicator")


def matches(config: DirectoryConfig, path: Path) -> bool:
    """Whether `path` is where a database of `config` could be (rules 1-2), whatever it holds."""
    try:
        relative = path.relative_to(config.dir)
    except ValueError:
        return False
    if not relative.parts or (len(relative.parts) > 1 and not config.recursive):
        return False
    if any(is_state_dir(part) for part in relative.parts[:-1]) or path.name.endswith(_SQLITE_FILES):
        return False
    return fnmatch.fnmatchcase(path.name, config.pattern)


def is_database(path: Path) -> bool:
    """Rule 1's content check: SQLite's header (not an empty file, not something else)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError:
        return False
    if head == SQLITE_MAGIC:
        return True
    if head and path not in _warned:
        _warned.add(path)
        log.warning("%s matches the directory's pattern but is not a SQLite database: skipping it", path)
    return False


def directories(config: DirectoryConfig) -> Iterator[Path]:
    """The directory and, if recursive, every subdirectory that can hold databases (rule 2)."""
    if not config.recursive:
        yield config.dir
        return
    for root, dirs, _ in os.walk(config.dir):
        dirs[:] = sorted(d for d in dirs if not is_state_dir(d))
        yield Path(root)


def scan(config: DirectoryConfig, known: Container[Path] = ()) -> list[Path]:
    """Every database in the directory now, but those in `known` (not even opened: a sweep stays cheap)."""
    found = []
    for directory in directories(config):
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = directory / name
            if path not in known and matches(config, path) and path.is_file() and is_database(path):
                found.append(path)
    return found


# -- restoring a whole directory (`restore --dir-all`) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DirectoryRestore:
    """What `restore_all` did, per database (relative path)."""

    restored: list[tuple[str, RestorePlan]]
    skipped: list[str]  # the output existed (if_db_not_exists)
    failed: list[tuple[str, ReplicatorError]]


def replicated_under(client: ReplicaClient) -> list[str]:
    """The relative paths of the databases replicated under a directory's base URL (one LIST of it all).

    A database's replica root holds `generations/` and its owner record (ownership.py); the names found are
    checked like any key (no `..`, nothing absolute), so a hostile listing cannot aim a restore elsewhere.
    """
    found: set[str] = set()
    for info in client.list(""):
        key = info.key
        if key.endswith("/" + OWNER_KEY):
            found.add(key[: -len(OWNER_KEY) - 1])
        elif "/" + keys.GENERATIONS in key:
            found.add(key.split("/" + keys.GENERATIONS, 1)[0])
    names = []
    for name in sorted(found):
        try:
            names.append(check_key(name))
        except ValueError:
            log.warning("%s: skipping %r, which is not a database's place under a directory", client.url, name)
    return names


def restore_all(
    base_url: str,
    output: Path,
    *,
    parallelism: int = 8,
    if_db_not_exists: bool = False,
    open_replica: Callable[[str], ReplicaClient] | None = None,
) -> DirectoryRestore:
    """Restore every database replicated under `base_url` into `output` (relative paths kept), several at once.

    Each is a latest-state restore (it leaves the state that lets `replicate --dir` continue it). A database
    that fails does not stop the others; its error is in the result.
    """
    from .storage import open_client

    opener = open_replica or open_client
    names = replicated_under(opener(base_url))
    restored: list[tuple[str, RestorePlan]] = []
    skipped: list[str] = []
    failed: list[tuple[str, ReplicatorError]] = []

    def one(name: str) -> None:
        target = output / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            client = opener(replica_url_for(base_url, name))
            done = restore(client, target, parallelism=2, if_db_not_exists=if_db_not_exists)
        except ReplicatorError as exc:
            failed.append((name, exc))
        except OSError as exc:
            failed.append((name, ReplicatorError(f"cannot create {target.parent}: {exc.strerror or exc}")))
        else:
            if done.plan is None:
                skipped.append(name)
            else:
                restored.append((name, done.plan))

    with ThreadPoolExecutor(max(1, parallelism), thread_name_prefix="restore") as pool:
        list(pool.map(one, names))
    return DirectoryRestore(sorted(restored, key=lambda r: r[0]), sorted(skipped), sorted(failed, key=lambda f: f[0]))
