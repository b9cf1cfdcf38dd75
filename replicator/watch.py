"""Change detection for every database of a process: one inotify instance on their directories.

Rules:
1. We watch directories, not files: one watch covers every database in it, its -wal file (SQLite writes
   it with write(2), so each commit is an IN_MODIFY), and the files appearing, vanishing or being renamed
   over (a restore, a deleted tenant). The -shm is written through mmap, which inotify never reports.
2. An event only says "look at this database soon"; what changed is read from SQLite's own files. A lost
   event (queue overflow) makes everything be looked at, and the store's slow sweep covers the rest.
3. Where inotify is missing (not Linux, or the watch limit is reached) `watch` returns False and the
   caller polls that directory's databases instead.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inotify_simple import INotify

log = logging.getLogger(__name__)

_SUFFIXES = ("-wal", "-shm", "-journal")
_PATHS_KEPT = 4096  # file paths remembered (_child, database_of): a busy app's events cost no path parsing


@dataclass(slots=True)
class Changes:
    """What one read of the queue reported: files written, files that came or went, and whether events were lost."""

    written: set[Path] = field(default_factory=set)  # IN_MODIFY: a commit, most often
    moved: set[Path] = field(default_factory=set)  # created, deleted, renamed, closed after writing
    overflow: bool = False


@functools.lru_cache(maxsize=_PATHS_KEPT)
def _child(directory: Path, name: str) -> Path:
    return directory / name if name else directory


@functools.lru_cache(maxsize=_PATHS_KEPT)
def database_of(path: Path) -> Path:
    """The database a file belongs to: `app.db-wal` -> `app.db`."""
    for suffix in _SUFFIXES:
        if path.name.endswith(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return path


class Watcher:
    """One inotify instance; `fileno()` becomes readable when something under a watched directory changed."""

    def __init__(self) -> None:
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._dirs: dict[int, Path] = {}
        self._watched: set[Path] = set()
        try:
            from inotify_simple import INotify, flags
        except (ImportError, OSError):
            self._inotify = None
            return
        self._inotify = INotify(nonblocking=True)
        self._mask = (
            flags.MODIFY
            | flags.CREATE
            | flags.DELETE
            | flags.MOVED_FROM
            | flags.MOVED_TO
            | flags.DELETE_SELF
            | flags.MOVE_SELF
            | flags.CLOSE_WRITE
        )
        self._modify = int(flags.MODIFY)
        self._overflow = int(flags.Q_OVERFLOW)
        self._ignored = int(flags.IGNORED)

    def watch(self, directory: Path) -> bool:
        """Report changes of files in `directory` (rule 1); False if they cannot be (rule 3)."""
        if directory in self._watched:
            return True
        if self._inotify is None:
            return False
        try:
            wd = self._inotify.add_watch(directory, self._mask)
        except OSError as exc:
            log.warning("cannot watch %s (%s): polling its databases instead", directory, exc.strerror or exc)
            return False
        self._dirs[wd] = directory
        self._watched.add(directory)
        return True

    def wake(self) -> None:
        """Make a `wait` in another thread return now (thread-safe; called from signal handlers too)."""
        try:
            os.write(self._wakeup_w, b"x")
        except BlockingIOError:
            pass  # already pending

    def wait(self, timeout: float | None, *, events_from: float = 0.0) -> Changes:
        """Block until something changed, `wake` was called, or `timeout` seconds passed.

        File events are read only from `events_from` (time.monotonic()) on: until then they stay queued in
        the kernel, which merges repeats, and are read in the same call once that time comes. This is how a
        caller bounds its wake-ups while databases are busy, at one wake-up per bound.
        """
        inotify = self._inotify
        rest = events_from - time.monotonic()
        fds = [self._wakeup_r]
        if inotify is not None and rest <= 0:
            fds.append(inotify.fileno())
        elif timeout is None or rest < timeout:
            timeout = rest
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            ready = []
        changes = Changes()
        if self._wakeup_r in ready:
            try:
                while os.read(self._wakeup_r, 4096):
                    pass
            except BlockingIOError:
                pass
        if inotify is not None and time.monotonic() >= events_from:
            self._read_events(inotify, changes)
        return changes

    def _read_events(self, inotify: INotify, changes: Changes) -> None:
        for event in inotify.read(timeout=0):
            if event.mask & self._overflow:
                changes.overflow = True
            elif event.mask & self._ignored:
                directory = self._dirs.pop(event.wd, None)
                if directory is not None:
                    self._watched.discard(directory)  # deleted or unmounted: re-watched when it is back
                    changes.overflow = True
            elif (directory := self._dirs.get(event.wd)) is not None:
                path = _child(directory, event.name)
                (changes.written if event.mask == self._modify else changes.moved).add(path)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)
