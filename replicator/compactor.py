"""Building compacted segments from what this replicator shipped, never from what a replica holds: the edge of
compaction.py (which plans, and merges), with the local cache and the hand-over to the spool.

Rules:
1. Every segment spooled is also linked into the cache (`cache/` in the state directory, laid out like a
   replica): a hard link, so it costs no copy, and it stays when the spool lets its file go. No GET of our
   own uploads, ever.
2. When a window has passed, what compaction.plan_compaction says is built: each compacted segment is merged
   from cache files into the cache (written whole or not at all), then linked into the spool, from where the
   uploaders send it to each replica that holds the range it covers (spool.py's extras). A crash before the
   link leaves it built but unsent: restore then uses the finer objects there, as it does for any window
   that was skipped.
3. The cache keeps what a higher level may still merge (compaction.spent), at most CACHE_LIMIT bytes and
   never more than its disk has left free; beyond that the oldest go first (their windows are then skipped,
   rule 2). It gives way to the spool: when the spool cannot write, the cache is emptied (`shed`).
4. The cache belongs to one generation: a new one empties it. A compacted segment that cannot be built (a
   full disk, a damaged cache file) is said once and its window skipped: compaction never stops replication.
5. Building runs on one thread of the process (`start_run`), one database at a time, beside the capture
   loops and never in their way: merging an hour of changes can take seconds. A bug in it is logged with its
   traceback and turns compaction off for that database, loudly.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from . import keys
from .compaction import NotARun, merge, plan_compaction, spent
from .errors import CorruptSegment, MalformedKey, StorageError
from .keys import SegmentKey
from .storage.file import FileClient, fsync_dir

log = logging.getLogger(__name__)

CACHE_LIMIT = 256 << 20  # bytes of segments kept for compaction (rule 3)
_BUILDER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compact")  # rule 5; its thread starts on first use


class Compactor:
    """One database's compaction: fed each spooled segment (`add`), run when `due` (rule 2)."""

    def __init__(
        self,
        root: Path,
        spool: FileClient,
        intervals: Sequence[float],
        *,
        on_built: Callable[[SegmentKey, int], None],
        zstd_level: int = 1,
        limit: int = CACHE_LIMIT,
    ) -> None:
        self.zstd_level = zstd_level
        self.cache = FileClient(root)
        self.spool = spool
        self.intervals_us = [round(i * 1e6) for i in intervals]
        self.on_built = on_built
        self.limit = limit
        self.generation: int | None = None
        self.held: dict[SegmentKey, int] = {}  # what the cache holds, with sizes
        self.due_us: int | None = None  # when a window holding something at hand next passes: run then
        self.on_done: Callable[[], None] = lambda: None  # a run ended: the database's step looks again
        self._lock = threading.Lock()  # `held` and `due_us`: the capture loop adds while a run builds
        self._running: Future[list[SegmentKey]] | None = None
        self._broken = False
        self._stopping = False
        self._failed_said = False

    def start(self, generation: int) -> None:
        """Follow `generation`: keep what the cache holds of it (a restart), drop everything else (rule 4)."""
        self.wait()
        self.generation = generation
        self.held.clear()
        stale: list[str] = []
        try:
            for info in self.cache.list(keys.GENERATIONS):
                key = _parse(info.key)
                if key is not None and key.generation == generation:
                    self.held[key] = info.size
                else:
                    stale.append(info.key)
            self.cache.delete(stale)
        except StorageError as exc:
            log.warning("compaction cache %s cannot be read (%s); starting it afresh", self.cache.root, exc)
            self.held.clear()
        self.due_us = 0 if self.held else None  # a restart: look at once

    def add(self, key: SegmentKey) -> None:
        """Rule 1: a segment was just spooled."""
        if key.generation != self.generation:
            self.start(key.generation)
        try:
            _link(self.spool.path(key.key), self.cache.path(key.key))
        except OSError as exc:
            self._failed(f"cannot keep {key.key} for compaction: {exc.strerror or exc}")
            return
        closes = (key.last_time_us // self.intervals_us[0] + 1) * self.intervals_us[0]
        with self._lock:
            self.held[key] = self.cache.path(key.key).stat().st_size
            self.due_us = closes if self.due_us is None else min(self.due_us, closes)
        self._trim()

    @property
    def wake_us(self) -> int | None:
        """When the database's step should next look (None while a run builds: its end pokes it)."""
        return None if self._running is not None or self._broken else self.due_us

    def due(self, now_us: int) -> bool:
        wake = self.wake_us
        return wake is not None and now_us >= wake

    def start_run(self, now_us: int) -> None:
        """Rule 5: build what is due on the builder thread."""
        self._running = _BUILDER.submit(self.run, now_us)
        self._running.add_done_callback(self._finished)

    def stop(self) -> None:
        """The database is let go of: a run in progress ends after the segment it builds."""
        self._stopping = True
        self.wait()

    def wait(self) -> None:
        """Until a run in progress has ended."""
        running = self._running
        if running is not None:
            try:
                running.result()
            except Exception:  # said by _finished
                pass

    def _finished(self, run: Future[list[SegmentKey]]) -> None:
        exc = run.exception()
        if exc is not None:
            self._broken = True
            log.error("compaction of %s stopped: %r", self.cache.root, exc, exc_info=exc)
        self._running = None
        self.on_done()

    def run(self, now_us: int) -> list[SegmentKey]:
        """Build what is due (rule 2); returns the compacted segments handed to the spool."""
        built: list[SegmentKey] = []
        with self._lock:
            held = dict(self.held)
        for job in plan_compaction(held, self.intervals_us, now_us):
            if self._stopping:
                return built
            if not all(k in self.held for k in job.inputs):
                continue  # an input was dropped below, with its failed window
            out = job.output
            try:
                with self.cache.writer(out.key) as f:
                    merge(self._opened(job.inputs), f, level=job.level, zstd_level=self.zstd_level)
                size = self.cache.path(out.key).stat().st_size
                _link(self.cache.path(out.key), self.spool.path(out.key))
            except (OSError, StorageError, CorruptSegment, NotARun) as exc:
                self._failed(f"cannot build {out.key}: {exc}; restore uses the finer segments there")
                self._drop(job.inputs)
                continue
            with self._lock:
                self.held[out] = size
            self.on_built(out, size)
            built.append(out)
        with self._lock:
            held = dict(self.held)
        self._drop(spent(held, self.intervals_us, now_us))
        with self._lock:
            ends = ((k.last_time_us // i + 1) * i for k in self.held for i in self.intervals_us)
            self.due_us = min((t for t in ends if t > now_us), default=None)
        return built

    def _opened(self, inputs: Iterable[SegmentKey]) -> Iterator[tuple[SegmentKey, BinaryIO]]:
        for key in inputs:  # merge reads each to its end before it asks for the next
            with open(self.cache.path(key.key), "rb") as f:
                yield key, f

    def shed(self) -> None:
        """Rule 3: the spool needs the room; what the cache holds goes (its windows are skipped)."""
        with self._lock:
            held = list(self.held)
        if held:
            self._failed(f"the spool needs the room: {len(held)} cached segments dropped, their windows skipped")
            self._drop(held)

    def _trim(self) -> None:
        """Rule 3: the oldest go once the cache is over its limit or over what its disk has left free."""
        with self._lock:
            held = dict(self.held)
        total = sum(held.values())
        try:
            disk = os.statvfs(self.cache.root)
            limit = min(self.limit, disk.f_bavail * disk.f_frsize)
        except OSError:
            limit = self.limit
        if total <= limit:
            return
        doomed: list[SegmentKey] = []
        for key in sorted(held, key=lambda k: (k.last_txid, -k.level)):
            if total <= limit:
                break
            doomed.append(key)
            total -= held[key]
        self._drop(doomed)

    def _drop(self, doomed: Iterable[SegmentKey]) -> None:
        gone = list(doomed)
        with self._lock:
            for key in gone:
                self.held.pop(key, None)
        try:
            self.cache.delete(k.key for k in gone)
        except StorageError as exc:
            self._failed(f"cannot delete from the compaction cache: {exc}")

    def _failed(self, message: str) -> None:
        if not self._failed_said:
            log.warning("compaction: %s", message)
            self._failed_said = True
        else:
            log.debug("compaction: %s", message)


def _parse(name: str) -> SegmentKey | None:
    try:
        key = keys.parse(name)
    except MalformedKey:
        return None
    return key if isinstance(key, SegmentKey) else None


def _link(source: Path, target: Path) -> None:
    """A second name for `source` at `target` (replacing one left by a crash), durable once this returns."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        if os.path.samefile(source, target):
            return
        target.unlink()
        os.link(source, target)
    fsync_dir(target.parent)
