"""Many databases in one process: one thread keeps their schedule, small pools of threads do their work.

Rules:
1. A database (replicate.Replicator) is stepped by one pool thread at a time; each step says when the
   database is next due, or that only a file event can give it work. Nothing else wakes an idle database.
   Snapshots are taken within steps, so at most `workers` (2) are taken at once however many databases
   start a generation together; their spools share one limit (spool.py).
2. A commit's file event (watch.py) makes a database due as soon as a capture is allowed: at once after a
   quiet spell, else when its sync interval ends (a busy database is stepped once per interval, however
   many commits it makes). An event's step is followed by one more a poll later: SQLite writes the WAL
   before its index says the commit happened. A file created, deleted or renamed is looked at at once.
   Events are read at most once per EVENT_GAP: while apps commit hundreds of times a second, the kernel
   gathers their events and the store wakes 40 times a second, not per commit; the first commit after a
   quiet spell is read at once. While every event read is a commit of a database already waiting for its
   interval, the gap doubles up to EVENT_GAP_MAX (a busy database alone costs 10 wake-ups a second, not
   40); the first event that needs a look sets it back.
3. A sweep every SWEEP seconds stats every database's files and steps those that changed since their
   last step: it covers lost events at a few microseconds per database. Databases whose directory cannot
   be watched are looked at every few polls instead.
4. A failing database is isolated: logged, let go (it ships what it captured), and started afresh after a
   backoff while the others run on. If no database is left healthy, the store stops.
5. Stopping: every database is stepped with `stopping` until it halts (after the grace period), then
   finished on a wider pool (finishing mostly waits for uploads). `run` returns every database that ended
   in failure; the caller turns them into the exit code.
6. Uploads (uploader.Uploader) are jobs of their own, stepped on one pool per replica endpoint (a bucket,
   or the local file system) of UPLOADS_PER_ENDPOINT threads: a slow replica holds up no other, and a
   step sends at most one object, so one busy database cannot keep the others' objects waiting (the
   pool's queue is first in, first out). An idle uploader is woken only by its outbox's news.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from . import directory as directory_
from .config import DirectoryConfig
from .control import ControlServer
from .errors import ReplicatorError
from .replicate import Replicator
from .uploader import Uploader
from .watch import Changes, Watcher, database_of

log = logging.getLogger(__name__)

EVENT_GAP = 0.025  # after reading file events, let the next ones gather this long (rule 2) ...
EVENT_GAP_MAX = 0.1  # ... or up to this long while they only repeat what is known
SWEEP = 10.0  # seconds between looks at every database's files (rule 3)
RETRY_FIRST, RETRY_MAX = 5.0, 300.0  # backoff of a failed database (rule 4)
FINISH_WORKERS = 16
UPLOADS_PER_ENDPOINT = 4

Failure = tuple[Path, BaseException]


@dataclass(eq=False)
class _Entry:
    make: Callable[[], Replicator]
    replicator: Replicator
    due: float | None = None
    running: bool = False
    event: bool = False  # a commit's file event came that no step has looked at yet (rule 2)
    stepped_for_event: bool = False  # the running step is such a look
    urgent: bool = False  # step again as soon as the running step ends (a poke, a file moved, a due time)
    watched: bool = False
    failure: BaseException | None = None
    failures: int = 0  # in a row: the backoff
    retry_at: float = 0.0
    done: bool = False  # finished, or failed while stopping
    removing: bool = False  # a directory's database that was deleted: finish it and forget it

    @property
    def path(self) -> Path:
        return self.replicator.db_path


@dataclass(eq=False)
class _Upload:
    """One uploader's place in the schedule (rule 6)."""

    uploader: Uploader
    owner: _Entry
    replicator: Replicator  # the one it serves: a restarted database's new uploaders replace these
    due: float | None = None
    running: bool = False
    urgent: bool = False  # its outbox had news while it ran: step again

    @property
    def stale(self) -> bool:
        return self.uploader.done or self.owner.replicator is not self.replicator


def endpoint_of(url: str) -> str:
    """The pool an upload runs on: s3://bucket (whatever the prefix), or the local file system."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme == "s3" else "file"


class Store:
    """Runs databases side by side until `stop()` (see the module docstring)."""

    def __init__(
        self,
        databases: Iterable[Callable[[], Replicator]],
        *,
        directories: Iterable[tuple[DirectoryConfig, Callable[[Path], Replicator]]] = (),
        workers: int = 2,
    ) -> None:
        self._workers = workers
        self._watcher = Watcher()
        self._stopping = threading.Event()
        self._control = ControlServer()  # every database's control socket (control.py)
        # Pool threads and uploaders talk to the schedule only through these two queues (and `_watcher.wake`).
        self._results: queue.SimpleQueue[tuple[_Entry | _Upload, str, float | None, BaseException | None]] = (
            queue.SimpleQueue()
        )
        self._pokes: queue.SimpleQueue[_Entry | _Upload] = queue.SimpleQueue()
        self._registrations: queue.SimpleQueue[_Entry] = queue.SimpleQueue()
        self._heap: list[tuple[float, int, _Entry | _Upload]] = []
        self._uploads: dict[int, _Upload] = {}  # by id(uploader)
        self._upload_pools: dict[str, ThreadPoolExecutor] = {}
        self._seq = itertools.count()
        self._entries: list[_Entry] = []
        self._by_path: dict[Path, _Entry] = {}
        self._ended: list[Failure] = []  # failures of databases no longer in the schedule (deleted ones)
        self._directories = [(replace(d, dir=d.dir.resolve()), make) for d, make in directories]
        for make in databases:
            self._add(make)

    def _add(self, make: Callable[[], Replicator]) -> _Entry:
        entry = _Entry(make, make())
        self._hook(entry)
        self._entries.append(entry)
        self._by_path[entry.path] = entry
        return entry

    @property
    def replicators(self) -> list[Replicator]:
        return [e.replicator for e in self._entries]

    @property
    def directories(self) -> list[DirectoryConfig]:
        return [config for config, _ in self._directories]

    def stop(self) -> None:
        """Ship what is committed and stop (thread-safe, and safe in a signal handler)."""
        self._stopping.set()
        self._watcher.wake()

    def _hook(self, entry: _Entry) -> None:
        """Let the database (from any thread) ask for a step, and have its uploaders scheduled as it starts them."""

        def poke() -> None:
            self._pokes.put(entry)
            self._watcher.wake()

        def uploaders() -> None:
            self._registrations.put(entry)
            self._watcher.wake()

        entry.replicator.poke = poke
        entry.replicator.on_uploaders = uploaders
        entry.replicator.control = self._control

    # -- the schedule (only the thread in `run` touches entries) -------------------------------------------

    def _schedule(self, entry: _Entry | _Upload, at: float | None) -> None:
        if at is None or (entry.due is not None and entry.due <= at):
            return
        entry.due = at
        heapq.heappush(self._heap, (at, next(self._seq), entry))

    def _pop_due(self, now: float) -> list[_Entry | _Upload]:
        due = []
        while self._heap and self._heap[0][0] <= now:
            at, _, entry = heapq.heappop(self._heap)
            if entry.due == at:
                entry.due = None
                due.append(entry)
        return due

    def run(self) -> list[Failure]:
        work = ThreadPoolExecutor(self._workers, thread_name_prefix="capture")
        finishing = ThreadPoolExecutor(FINISH_WORKERS, thread_name_prefix="finish")
        stopping = False
        next_sweep = time.monotonic() + SWEEP
        events_at = 0.0  # file events are read again from then on
        gap = EVENT_GAP
        self._control.start()
        try:
            for entry in self._entries:
                entry.watched = self._watcher.watch(entry.path.parent)
                self._schedule(entry, time.monotonic())
            for config, _ in self._directories:
                log.info(
                    "replicating every database named %s in %s%s to %s",
                    config.pattern,
                    config.dir,
                    " and its subdirectories" if config.recursive else "",
                    ", ".join(f"{url}/<its path in {config.dir.name}>" for url in config.replicas),
                )
            self._discover()
            while any(not e.done or e.running for e in self._entries) or (self._directories and not stopping):
                now = time.monotonic()
                if self._stopping.is_set() and not stopping:
                    stopping = True
                    self._changed(self._watcher.wait(0))  # events not read yet (EVENT_GAP) ...
                    self._discover()  # ... and every database in the directories now gets finished too
                    for entry in self._entries:
                        if entry.failure is not None and not entry.running:
                            entry.done = True  # already let go; its failure stands
                        self._schedule(entry, now)
                for job in self._pop_due(now):
                    if isinstance(job, _Upload):
                        self._dispatch_upload(job)
                    else:
                        self._dispatch(job, work, stopping)
                timeout = max(0.0, min(self._heap[0][0] if self._heap else next_sweep, next_sweep) - now)
                changes = self._watcher.wait(timeout, events_from=events_at)  # rule 2's bound on wake-ups
                self._collect(finishing, stopping)
                news = self._changed(changes)
                if changes.written or changes.moved:
                    gap = EVENT_GAP if news else min(2 * gap, EVENT_GAP_MAX)
                    events_at = time.monotonic() + gap
                while not self._registrations.empty():
                    self._register_uploads(self._registrations.get())
                while not self._pokes.empty():
                    poked = self._pokes.get()
                    if poked.running:
                        poked.urgent = True  # its step may have missed the news: another one follows
                    self._schedule(poked, time.monotonic())
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + SWEEP
                    self._sweep()
                    if not stopping:
                        self._discover()
        finally:
            work.shutdown(wait=True)
            finishing.shutdown(wait=True)
            for pool in self._upload_pools.values():
                pool.shutdown(wait=True)
            self._watcher.close()
            self._control.close()
        return self._ended + [(e.path, e.failure) for e in self._entries if e.failure is not None]

    def _sweep(self) -> None:
        """Rule 3: step every database whose files changed since its last step (an event we missed)."""
        now = time.monotonic()
        for entry in self._entries:
            if entry.running or entry.failure is not None:
                continue
            if not entry.watched or entry.replicator.files_fingerprint() != entry.replicator.fingerprint:
                self._schedule(entry, now)

    # -- directories (directory.py) -----------------------------------------------------------------------

    def _discover(self, within: Path | None = None) -> None:
        """Watch the directories and take in every database in them not followed yet (all, or `within`'s)."""
        for config, make in self._directories:
            for directory in directory_.directories(config):
                if within is None or directory == within or directory.is_relative_to(within):
                    self._watcher.watch(directory)
            for path in directory_.scan(config, known=self._by_path):
                if within is None or path.parent == within or path.is_relative_to(within):
                    self._found(path, make)

    def _found(self, path: Path, make: Callable[[Path], Replicator]) -> None:
        if path.resolve() in self._by_path:
            return
        entry = self._add(functools.partial(make, path))
        log.info(
            "%s: a new database in the directory; replicating it to %s",
            entry.path,
            ", ".join(c.url for c in entry.replicator.clients),
        )
        entry.watched = self._watcher.watch(entry.path.parent)
        self._schedule(entry, time.monotonic())

    def _directory_change(self, path: Path) -> None:
        """A file event in a watched directory that is not about a database we follow."""
        for config, make in self._directories:
            if config.recursive and path.is_dir() and path.is_relative_to(config.dir):
                self._discover(within=path)  # a new subdirectory (files may already be in it)
            elif directory_.matches(config, path) and directory_.is_database(path):
                self._found(path, make)

    def _dispatch(self, entry: _Entry, work: ThreadPoolExecutor, stopping: bool) -> None:
        if entry.done:
            return
        if entry.running:
            entry.urgent = True  # look again once this step is over
            return
        entry.running, entry.urgent = True, False
        if entry.failure is not None:
            if stopping:
                entry.running, entry.done = False, True
                return
            work.submit(self._restart, entry)
            return
        entry.stepped_for_event, entry.event = entry.event, False
        work.submit(self._step, entry, stopping or entry.removing)

    def _in_directory(self, path: Path) -> bool:
        return any(directory_.matches(config, path) for config, _ in self._directories)

    def _dispatch_upload(self, job: _Upload) -> None:
        if job.stale:
            self._uploads.pop(id(job.uploader), None)
            return
        if job.running:
            job.urgent = True
            return
        job.running, job.urgent = True, False
        endpoint = endpoint_of(job.uploader.client.url)
        pool = self._upload_pools.get(endpoint)
        if pool is None:
            pool = self._upload_pools[endpoint] = ThreadPoolExecutor(UPLOADS_PER_ENDPOINT, f"upload {endpoint}")
        pool.submit(self._upload, job)

    def _register_uploads(self, entry: _Entry) -> None:
        """A database's uploaders join the schedule once it has started them (rule 6)."""
        replicator = entry.replicator
        fresh = [u for u in replicator.uploaders if id(u) not in self._uploads]
        if not fresh:
            return
        jobs = [_Upload(u, entry, replicator) for u in fresh]
        for job in jobs:
            self._uploads[id(job.uploader)] = job
            self._schedule(job, time.monotonic())
        everyone = [self._uploads[id(u)] for u in replicator.uploaders]

        def news() -> None:
            for job in everyone:
                self._pokes.put(job)
            self._watcher.wake()

        replicator.outbox.on_news = news

    def _changed(self, changes: Changes) -> bool:
        """Schedule the databases the events are about; False if they only repeated what was known (rule 2):
        commits of databases already waiting for their sync interval, or files that are no database."""
        now = time.monotonic()
        if changes.overflow:
            for entry in self._entries:
                self._schedule(entry, now)
            return True
        news = False
        for path in changes.written | changes.moved:
            found = self._by_path.get(database_of(path))
            if found is None:
                if self._directories and path == database_of(path):
                    news = True
                    self._directory_change(path)
                continue
            if found.failure is not None:
                continue
            if self._directories and path == found.path and not path.exists() and self._in_directory(found.path):
                found.removing = True  # deleted: finished cleanly, its replica kept
            if path in changes.moved:
                if found.running:
                    found.urgent = True
                self._schedule(found, now)
                news = True
            else:
                at = max(now, found.replicator.capture_not_before)
                news = news or at == now
                found.event = True
                if not found.running:
                    self._schedule(found, at)
        return news

    def _collect(self, finishing: ThreadPoolExecutor, stopping: bool) -> None:
        """Take in what the pool threads did: reschedule, finish, or isolate a failure (rule 4)."""
        while not self._results.empty():
            job, outcome, wake, exc = self._results.get()
            job.running = False
            now = time.monotonic()
            if isinstance(job, _Upload):
                self._uploaded(job, wake, exc)
                continue
            entry = job
            if outcome == "stepped":
                if entry.replicator.db is not None:
                    entry.failures = 0  # it follows its database again: the backoff starts over
                if not entry.watched:
                    entry.watched = self._watcher.watch(entry.path.parent)
                if entry.replicator.halted:
                    entry.running = True
                    finishing.submit(self._finish, entry)
                    continue
                poll = entry.replicator.settings.poll_interval
                if not entry.watched:
                    wake = _earliest(wake, now + 3 * poll)
                capture_at = entry.replicator.capture_not_before
                if entry.urgent:
                    wake = now
                elif entry.event:  # commits came while it stepped (rule 2)
                    wake = _earliest(wake, max(now, capture_at))
                elif entry.stepped_for_event:  # it may have looked just before the index said so (rule 2)
                    wake = _earliest(wake, max(now + poll, capture_at))
                self._schedule(entry, wake)
            elif outcome == "finished":
                entry.done = True
                entry.failure = exc
                if entry.removing:
                    self._forget(entry)
            elif outcome == "failed":
                assert exc is not None
                self._failed(entry, exc, finishing, stopping)
            elif outcome == "abandoned":
                if not entry.done:
                    self._schedule(entry, max(entry.retry_at, now))
            elif outcome == "restarted":
                entry.failure = None
                self._schedule(entry, now)

    def _forget(self, entry: _Entry) -> None:
        """A deleted database of a directory is finished: out of the schedule (a new file there is new)."""
        self._entries.remove(entry)
        del self._by_path[entry.path]
        if entry.failure is not None:
            self._ended.append((entry.path, entry.failure))

    def _uploaded(self, job: _Upload, wake: float | None, exc: BaseException | None) -> None:
        if exc is not None:
            job.uploader.crashed = exc  # the database's next step fails with it (uploader rule 8)
            self._schedule(job.owner, time.monotonic())
            return
        if job.urgent and not job.uploader.done:
            wake = time.monotonic()
        self._schedule(job, wake)

    def _failed(self, entry: _Entry, exc: BaseException, finishing: ThreadPoolExecutor, stopping: bool) -> None:
        entry.failure, entry.failures = exc, entry.failures + 1
        entry.running = True  # until it has let go: its successor needs the lock it holds
        finishing.submit(self._abandon, entry)
        healthy = [e for e in self._entries if e.failure is None and not e.done]
        if stopping or (not healthy and not self._directories):
            entry.done = True
            if not healthy:
                self.stop()  # nothing left to replicate: the others that failed are done too
                for other in self._entries:
                    if other.failure is not None and not other.running:
                        other.done = True
            return
        delay = min(RETRY_FIRST * 2 ** (entry.failures - 1), RETRY_MAX)
        log.error("%s: replication stopped (%s); the other databases go on; retrying in %.0fs", entry.path, exc, delay)
        entry.retry_at = time.monotonic() + delay

    # -- on the pool threads ----------------------------------------------------------------------------

    def _step(self, entry: _Entry, stopping: bool) -> None:
        try:
            self._results.put((entry, "stepped", entry.replicator.step(stopping=stopping), None))
        except BaseException as exc:
            _log_unexpected(entry.path, exc)
            self._results.put((entry, "failed", None, exc))
        self._watcher.wake()

    def _upload(self, job: _Upload) -> None:
        try:
            self._results.put((job, "uploaded", job.uploader.step(), None))
        except BaseException as exc:
            log.error("the upload thread for %s died", job.uploader.client.url, exc_info=exc)
            self._results.put((job, "uploaded", None, exc))
        self._watcher.wake()

    def _finish(self, entry: _Entry) -> None:
        try:
            entry.replicator.finish()
            self._results.put((entry, "finished", None, None))
        except BaseException as exc:
            _log_unexpected(entry.path, exc)
            self._results.put((entry, "finished", None, exc))
        self._watcher.wake()

    def _abandon(self, entry: _Entry) -> None:
        try:
            entry.replicator.abandon()
        except BaseException:
            log.exception("while letting go of %s after a failure", entry.path)
        self._results.put((entry, "abandoned", None, None))
        self._watcher.wake()

    def _restart(self, entry: _Entry) -> None:
        """Rule 4's retry: a fresh Replicator (its predecessor let go of everything)."""
        try:
            entry.replicator = entry.make()
            self._hook(entry)
            log.info("%s: starting again", entry.path)
            self._results.put((entry, "restarted", None, None))
        except BaseException as exc:
            self._results.put((entry, "failed", None, exc))
        self._watcher.wake()


def _earliest(wake: float | None, at: float) -> float:
    return at if wake is None else min(wake, at)


def _log_unexpected(path: Path, exc: BaseException) -> None:
    """Expected failures (ReplicatorError) are one line, said by the caller; anything else gets its traceback."""
    if not isinstance(exc, ReplicatorError):
        log.error("replication of %s failed unexpectedly", path, exc_info=exc)
