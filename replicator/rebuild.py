"""Rebuilding a database from a replica: a pure plan from the listing, then a verified, atomic apply.

Plan (no I/O): pick the generation (the newest, or the one covering the target time), then the cheapest
unbroken chain from one of its snapshots at or before the target to the last txid it reaches there: the
fewest objects, taking compacted segments (compaction.py) wherever they end at or before the target. A gap
in the chain is an error, never a silent older state.

Apply: stream the snapshot into a temporary file beside the output, apply each segment's commit records
(pages written in place, file cut to the commit's size), verify every object as it is read, run
`PRAGMA integrity_check`, fsync, rename into place, fsync the directory. On any failure the temporary file
is removed: no output is ever half-written.
"""

from __future__ import annotations

import enum
import os
import queue
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar, cast

import apsw

from . import keys, paths
from .errors import ReplicatorError
from .history import by_generation, format_time, last_write, overlaps, restorable_span, started
from .keys import ObjectKey, SegmentKey, SnapshotKey
from .segment import HEADER_SIZE, Readable, SegmentReader, parse_header
from .state import file_digest, record_restored
from .storage import ReplicaClient
from .storage.file import fsync_dir

T = TypeVar("T")


class RestoreError(ReplicatorError):
    """The replica cannot produce the requested database."""


class ReplicaEmpty(RestoreError):
    """The replica holds no restorable generation."""


@dataclass(frozen=True, slots=True)
class RestorePlan:
    generation: int
    snapshot: SnapshotKey
    segments: tuple[SegmentKey, ...]
    sizes: Mapping[ObjectKey, int] = field(default_factory=dict, compare=False)  # of its objects, where known

    @property
    def txid(self) -> int:
        return self.segments[-1].last_txid if self.segments else self.snapshot.txid

    @property
    def objects(self) -> tuple[ObjectKey, ...]:
        return (self.snapshot, *self.segments)


def plan_restore(
    objects: Iterable[ObjectKey],
    *,
    sizes: Mapping[ObjectKey, int] | None = None,
    generation: int | None = None,
    txid: int | None = None,
    timestamp_us: int | None = None,
    now_us: int | None = None,
) -> RestorePlan:
    """Choose what to fetch to rebuild the database at the target (the latest state by default).

    The target is reached by the fewest objects (then the fewest bytes, from `sizes`) that chain from a
    snapshot: compacted segments where they end at or before the target, shipped ones for the rest.

    A time after the last commit restores the latest state (nothing changed since), unless it lies
    after `now_us` (a typo rather than a wish); a txid after the last one shipped is an error.
    """
    based = {g: items for g, items in by_generation(objects).items() if started(items) is not None}
    if not based:
        raise ReplicaEmpty("the replica holds no snapshot to restore from (nothing replicated there yet?)")
    if generation is not None:
        if generation not in based:
            raise RestoreError(f"generation {generation:016x} is not in the replica (or has no snapshot)")
        chosen = generation
    elif timestamp_us is not None:
        starts = {g: started(items) or 0 for g, items in based.items()}
        candidates = [g for g in based if starts[g] <= timestamp_us]
        if not candidates:
            span = restorable_span(k for items in based.values() for k in items)
            assert span is not None
            raise RestoreError(
                f"{format_time(timestamp_us)} is before the earliest restorable point; the replica can restore "
                f"from {format_time(span[0])} to {format_time(span[1])}"
            )
        chosen = max(candidates, key=lambda g: (starts[g], g))
    else:
        chosen = max(based)  # the newest: a writer that sees a newer generation than its own stops (lineage.py)

    items = based[chosen]
    latest = max(k.txid if isinstance(k, SnapshotKey) else k.last_txid for k in items)
    latest_point = f"txid {latest} of generation {chosen:016x}, as of {format_time(last_write(items))}"
    if txid is not None and txid > latest:
        raise RestoreError(f"transaction {txid} was never shipped; the latest restorable is {latest_point}")
    if timestamp_us is not None and now_us is not None and timestamp_us > now_us:
        raise RestoreError(f"{format_time(timestamp_us)} is in the future; the latest restorable is {latest_point}")

    def reachable(k: ObjectKey) -> bool:
        if isinstance(k, SnapshotKey):
            return (txid is None or k.txid <= txid) and (timestamp_us is None or k.time_us <= timestamp_us)
        return (txid is None or k.last_txid <= txid) and (timestamp_us is None or k.last_time_us <= timestamp_us)

    snapshots = [k for k in items if isinstance(k, SnapshotKey) and reachable(k)]
    if not snapshots:
        raise RestoreError(f"generation {chosen:016x} has no snapshot at or before the target")
    newest = max(snapshots, key=keys.chain_order)
    segments = [k for k in items if isinstance(k, SegmentKey)]
    fork = _fork([k for k in segments if k.last_txid > newest.txid], newest, txid)
    if fork is not None:
        seg, before = fork
        raise RestoreError(
            f"generation {chosen:016x} forked at txid {seg.first_txid}: two replicators shipped different "
            f"transactions from there ({seg.key} and {before.key}); restore --txid {seg.first_txid - 1} or "
            "another generation"
        )
    best = paths.cheapest(
        (paths.start(k.txid, k, (sizes or {}).get(k, 0)) for k in snapshots),
        (k for k in segments if reachable(k)),
        sizes or {},
    )
    end = max(best)
    # A gap matters if the target lies beyond it: then we must not stop short and call it done.
    beyond = [
        k
        for k in segments
        if k.first_txid > end + 1
        and (txid is None or k.first_txid <= txid)
        and (timestamp_us is None or k.last_time_us <= timestamp_us)
    ]
    if beyond:
        after = min(beyond, key=lambda k: k.first_txid)
        raise RestoreError(
            f"generation {chosen:016x} is missing transactions {end + 1}..{after.first_txid - 1} "
            f"(next object: {after.key}); restore an earlier point or another generation"
        )
    base, *chain = paths.objects_to(best, end)
    assert isinstance(base, SnapshotKey) and all(isinstance(k, SegmentKey) for k in chain)
    known = {k: sizes[k] for k in (base, *chain) if sizes and k in sizes}
    return RestorePlan(chosen, base, tuple(cast(list[SegmentKey], chain)), known)


def _fork(
    segments: Sequence[SegmentKey], snapshot: SnapshotKey, txid: int | None
) -> tuple[SegmentKey, ObjectKey] | None:
    """Two writers continued the chain at or before `txid`: two objects of one level cover a txid both
    (history.overlaps), or a shipped segment starts by the snapshot it would continue (a compacted one may
    span a snapshot)."""
    pairs: list[tuple[ObjectKey, SegmentKey]] = [
        (snapshot, k) for k in segments if k.level == 0 and k.first_txid <= snapshot.txid
    ]
    pairs += overlaps(segments)
    found = [(b, a) for a, b in pairs if txid is None or b.first_txid <= txid]
    return min(found, key=lambda p: p[0].first_txid, default=None)


@dataclass(frozen=True, slots=True)
class Listing:
    """What a replica holds: our objects with their sizes, and the keys that are not ours."""

    sizes: dict[ObjectKey, int]
    foreign: list[str]

    @property
    def objects(self) -> list[ObjectKey]:
        return list(self.sizes)

    def bytes_of(self, plan: RestorePlan) -> int:
        return sum(self.sizes[k] for k in plan.objects)


def list_replica(client: ReplicaClient) -> Listing:
    infos = list(client.list(keys.GENERATIONS))
    ours, foreign = keys.parse_listing(o.key for o in infos)
    size = {o.key: o.size for o in infos}
    return Listing({k: size[k.key] for k in ours}, foreign)


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a plan will cost, from two ranged GETs of its snapshot: a tiny one (latency) and up to 1 MiB."""

    gets: int
    bytes: int
    latency_s: float  # one small GET, first byte to last
    bandwidth: float  # bytes per second of one GET stream
    database_bytes: int  # the snapshot's database size, from its header
    seconds: float  # the predicted wall time of the restore, integrity check included

    INTEGRITY_CHECK_BYTES_PER_S = 900e6  # PRAGMA integrity_check here: ~0.3 s per 270 MB


def predict(client: ReplicaClient, plan: RestorePlan, parallelism: int = 8) -> Prediction:
    """Time a tiny and a 1 MiB ranged GET of the plan's snapshot and scale: the snapshot streams alone, the
    segments come `parallelism` at a time, then integrity_check runs over the database."""
    key, sizes = plan.snapshot.key, plan.sizes
    started = time.perf_counter()
    header = client.get(key, 0, HEADER_SIZE)
    latency = time.perf_counter() - started
    size = min(sizes.get(plan.snapshot, 1 << 20), 1 << 20)
    started = time.perf_counter()
    client.get(key, 0, size)
    elapsed = time.perf_counter() - started
    bandwidth = size / max(elapsed - latency, elapsed / 2, 1e-6)
    snap = parse_header(header, key)
    database = snap.db_size * snap.page_size
    segment_bytes = sum(sizes.get(k, 0) for k in plan.segments)
    rounds = -(-len(plan.segments) // max(1, parallelism))
    seconds = (
        latency
        + sizes.get(plan.snapshot, 0) / bandwidth
        + rounds * latency
        + segment_bytes / (bandwidth * min(parallelism, max(1, len(plan.segments))))
        + database / Prediction.INTEGRITY_CHECK_BYTES_PER_S
    )
    total = sum(sizes.get(k, 0) for k in plan.objects)
    return Prediction(len(plan.objects), total, latency, bandwidth, database, seconds)


Progress = Callable[[int], None]  # called with each number of bytes fetched


def output_exists(output: Path) -> bool:
    """Whether something is at the output path already; RestoreError for a path that cannot name a file."""
    try:
        os.stat(output)
    except (FileNotFoundError, NotADirectoryError):  # the parent check names a parent that is a file
        return os.path.lexists(output)  # a dangling symlink is something too
    except OSError as exc:  # a name too long, a loop of symlinks, a file used as a directory...
        raise RestoreError(f"cannot use {output} as the output: {exc.strerror}") from None
    return True


def check_output(output: Path) -> None:
    """Fail before fetching anything if the output cannot be written."""
    if output_exists(output):
        if output.is_dir():
            raise RestoreError(f"{output} is a directory; give the path of the database file to create")
        raise RestoreError(f"{output} already exists; remove it, restore elsewhere, or use --if-db-not-exists")
    # The nearest directory that exists: apply_plan creates the missing ones (a fresh container's /data).
    parent = next(p for p in (output.parent, *output.parent.parents) if os.path.lexists(p))
    if not parent.is_dir():
        raise RestoreError(f"{parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RestoreError(f"cannot write in {parent} (permission denied)")


def apply_plan(
    client: ReplicaClient,
    plan: RestorePlan,
    output: Path,
    *,
    parallelism: int = 8,
    progress: Progress | None = None,
) -> str:
    """Build the database of `plan` at `output`, which must not exist yet; returns its sha256 (hex).

    The snapshot streams through one resumable GET, read ahead of decompression; segments are fetched by
    `parallelism` threads while they are applied strictly in order. Memory stays bounded whatever the size.
    The digest is what lets replication continue the restored generation (state.record_restored).
    """
    output = output.absolute()
    check_output(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.restore-", dir=output.parent)
    except OSError as exc:
        raise RestoreError(f"cannot write in {output.parent}: {exc.strerror}") from None
    tmp = Path(tmp_name)
    fetch = _Fetcher(client, output.parent, max(1, parallelism), progress)
    try:
        return _build(fetch, plan, fd, tmp, output)
    except OSError as exc:  # our own writes: a full disk, a vanished directory, an odd file system
        raise RestoreError(f"cannot write {output}: {exc.strerror or exc}; nothing was left behind") from None
    finally:
        tmp.unlink(missing_ok=True)


def _build(fetch: _Fetcher, plan: RestorePlan, fd: int, tmp: Path, output: Path) -> str:
    """Stream the plan into `tmp` (open as `fd`), verify it, and link it into place as `output`."""
    with os.fdopen(fd, "r+b") as f, fetch:
        snapshot = fetch.stream(plan.snapshot, plan.sizes.get(plan.snapshot))
        try:
            for chunk in SegmentReader(snapshot, plan.snapshot.key, expect=plan.snapshot).image():
                f.write(chunk)
        finally:
            snapshot.close()
        for seg, body in zip(plan.segments, fetch.in_order(plan.segments), strict=True):
            with body:
                _apply_segment(SegmentReader(body, seg.key, expect=seg), f)
        f.flush()
        # Three independent checks of the finished file at once: the fsync (mostly waiting on the disk), its
        # digest and integrity_check (each a core), all reading what the page cache holds.
        with ThreadPoolExecutor(2, thread_name_prefix="finish") as pool:
            synced = pool.submit(os.fsync, f.fileno())
            digest = pool.submit(file_digest, tmp)
            _check_integrity(tmp)
            synced.result()
    os.chmod(tmp, 0o666 & ~_umask())  # as the app's own file would be (mkstemp makes it 0600)
    for suffix in ("-wal", "-shm"):
        Path(f"{output}{suffix}").unlink(missing_ok=True)
    os.link(tmp, output)  # fails rather than replacing an output that appeared meanwhile
    fsync_dir(output.parent)
    return digest.result()


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _apply_segment(reader: SegmentReader, f: BinaryIO) -> None:
    page_size = reader.header.page_size
    for commit, pages in reader.commits():
        for pgno, image in pages:
            f.seek((pgno - 1) * page_size)
            f.write(image)
        f.truncate(commit.db_size * page_size)


class _Fetcher:
    """Whole-object downloads (resumed if a connection breaks), `workers` at a time, handed back in order."""

    IN_MEMORY = 24 << 20  # segments held in memory at once, in all: the rest wait on disk beside the output
    IN_MEMORY_EACH = 8 << 20  # and at most this much of any one

    def __init__(self, client: ReplicaClient, scratch: Path, workers: int, progress: Progress | None) -> None:
        self.client = client
        self.scratch = scratch
        self.workers = workers
        self.progress = progress
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fetch")
        # Up to workers + 1 downloads are held at once (see _window): each gets its share of the budget.
        self.in_memory_each = max(256 << 10, min(self.IN_MEMORY_EACH, self.IN_MEMORY // (workers + 1)))

    def __enter__(self) -> _Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def stream(self, key: ObjectKey, size: int | None = None) -> _ReadAhead | _Ranged:
        """A reader over the whole object, read ahead: one streaming GET (resumed where it broke), or for a
        large object of known size, ranged GETs on every worker, in order (_Ranged)."""
        if size is not None and size > _Ranged.SPLIT_ABOVE and self.workers > 1:
            return _Ranged(self.pool, self.client, key.key, size=size, workers=self.workers, progress=self.progress)
        return _ReadAhead(_Counted(self.client.stream(key.key), self.progress))

    def in_order(self, segments: Sequence[SegmentKey]) -> Iterator[BinaryIO]:
        """Each segment downloaded whole (in parallel, `workers` ahead), yielded in the given order."""
        futures = (self.pool.submit(self._download, seg) for seg in segments)
        for future in _window(futures, self.workers):
            yield future.result()

    def _download(self, key: ObjectKey) -> BinaryIO:
        body = tempfile.SpooledTemporaryFile(max_size=self.in_memory_each, mode="w+b", dir=str(self.scratch))  # noqa: SIM115
        try:
            shutil.copyfileobj(_Counted(self.client.stream(key.key), self.progress), body, 256 << 10)
            body.seek(0)
        except BaseException:
            body.close()
            raise
        return cast(BinaryIO, body)


class _Ranged:
    """An object fetched as ranged GETs, `workers` at a time, handed back in order.

    One connection rarely fills the pipe to an object store; several do (a large snapshot restores at the
    bandwidth of all of them). Bytes in flight stay under IN_FLIGHT whatever the parallelism: the chunk
    shrinks as the workers grow. Each GET is retried on its own (storage/retry.py), so a dropped
    connection costs one chunk.
    """

    SPLIT_ABOVE = 8 << 20  # smaller objects come in one GET
    IN_FLIGHT = 16 << 20
    MIN_CHUNK = 1 << 20

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        client: ReplicaClient,
        key: str,
        *,
        size: int,
        workers: int,
        progress: Progress | None,
    ) -> None:
        self.pool, self.client, self.key, self.size, self.progress = pool, client, key, size, progress
        self.chunk = max(self.MIN_CHUNK, min(8 << 20, self.IN_FLIGHT // workers))
        self._depth = max(1, self.IN_FLIGHT // self.chunk)
        self._offsets = iter(range(0, size, self.chunk))
        self._pending: deque[Future[bytes]] = deque()
        self._current = memoryview(b"")
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < self._depth and (offset := next(self._offsets, None)) is not None:
            self._pending.append(self.pool.submit(self._get, offset))

    def _get(self, offset: int) -> bytes:
        want = min(self.chunk, self.size - offset)
        data = self.client.get(self.key, offset, want)
        if len(data) != want:
            raise RestoreError(f"{self.key} is shorter than listed ({offset + len(data)} of {self.size} bytes)")
        if self.progress:
            self.progress(len(data))
        return data

    def read(self, size: int = -1) -> bytes:
        while not self._current:
            if not self._pending:
                return b""
            self._current = memoryview(self._pending.popleft().result())
            self._fill()
        take = len(self._current) if size < 0 else min(size, len(self._current))
        data, self._current = bytes(self._current[:take]), self._current[take:]
        return data

    def close(self) -> None:
        for future in self._pending:
            future.cancel()


def _window(futures: Iterator[Future[T]], size: int) -> Iterator[Future[T]]:
    """Keep `size` futures submitted ahead of the one being consumed."""
    pending: deque[Future[T]] = deque()
    for future in futures:
        pending.append(future)
        if len(pending) > size:
            yield pending.popleft()
    yield from pending


class _Counted:
    """A stream that reports each number of bytes read (the progress bar); resuming is the client's
    (storage/retry.py), the one place that retries."""

    def __init__(self, stream: Readable, progress: Progress | None) -> None:
        self._stream, self._progress = stream, progress

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        if self._progress:
            self._progress(len(data))
        return data


class _ReadAhead:
    """Reads a source in a background thread, a bounded number of chunks ahead of the consumer."""

    CHUNK = 1 << 20
    DEPTH = 8

    def __init__(self, source: Readable) -> None:
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=self.DEPTH)
        self._stop = threading.Event()
        self._current = b""
        self._pos = 0
        self._done = False
        threading.Thread(target=self._pump, args=(source,), daemon=True, name="read-ahead").start()

    def _pump(self, source: Readable) -> None:
        while not self._stop.is_set():
            try:
                item: bytes | BaseException = source.read(self.CHUNK)
            except BaseException as exc:  # handed to the consumer, which raises it
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, bytes) or not item:
                return

    def read(self, size: int = -1) -> bytes:
        parts = []
        while size != 0 and not self._done:
            if self._pos >= len(self._current):
                item = self._queue.get()
                if isinstance(item, BaseException):
                    self._stop.set()
                    raise item
                if not item:
                    self._done = True
                    break
                self._current, self._pos = item, 0
            available = len(self._current) - self._pos
            take = available if size < 0 else min(size, available)
            parts.append(self._current[self._pos : self._pos + take])
            self._pos += take
            if size > 0:
                size -= take
        return b"".join(parts)

    def close(self) -> None:
        self._stop.set()


def _check_integrity(path: Path) -> None:
    conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    except apsw.Error as exc:
        raise RestoreError(f"the restored database does not open: {exc}") from None
    finally:
        conn.close()
    if result != ["ok"]:
        raise RestoreError(f"the restored database fails integrity_check: {'; '.join(map(str, result[:3]))}")


class Skipped(enum.Enum):
    """Why a restore asked to be lenient did nothing (and succeeded)."""

    DATABASE_EXISTS = "the database exists (if_db_not_exists)"
    REPLICA_EMPTY = "the replica holds nothing (if_replica_exists)"


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did: the state it rebuilt (`plan`), or why it did nothing (`skipped`)."""

    path: Path
    plan: RestorePlan | None = None
    skipped: Skipped | None = None
    bytes: int = 0  # read from the replica
    seconds: float = 0.0
    foreign: tuple[str, ...] = ()  # keys under the replica's prefix that are not ours (ignored)

    @property
    def restored(self) -> bool:
        return self.plan is not None

    @property
    def txid(self) -> int | None:
        return self.plan.txid if self.plan else None

    @property
    def generation(self) -> int | None:
        return self.plan.generation if self.plan else None

    @property
    def as_of_us(self) -> int | None:
        """When the last transaction restored was captured (microseconds since the epoch)."""
        if self.plan is None:
            return None
        return self.plan.segments[-1].last_time_us if self.plan.segments else self.plan.snapshot.time_us


def restore(
    client: ReplicaClient,
    output: Path,
    *,
    parallelism: int = 8,
    if_db_not_exists: bool = False,
    if_replica_exists: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **target: int | None,
) -> RestoreResult:
    """Plan and apply: the latest state, or the one at `txid=` / `timestamp_us=` / in `generation=`.

    `progress(fetched, total)` is called with each number of bytes read and the plan's total. A restore of
    the latest state also leaves the state `replicate` continues from (leave_state).
    """
    if if_db_not_exists and output_exists(output):
        return RestoreResult(output, skipped=Skipped.DATABASE_EXISTS)
    check_output(output.absolute())
    started_at = time.monotonic()
    listing = list_replica(client)
    if not listing.sizes and if_replica_exists:
        return RestoreResult(output, skipped=Skipped.REPLICA_EMPTY, foreign=tuple(listing.foreign))
    plan = plan_restore(listing.objects, sizes=listing.sizes, now_us=time.time_ns() // 1000, **target)
    total = listing.bytes_of(plan)
    counted = None if progress is None else (lambda n: progress(n, total))
    digest = apply_plan(client, plan, output, parallelism=parallelism, progress=counted)
    if not any(v is not None for v in target.values()):
        leave_state(output, plan, digest)
    return RestoreResult(output, plan, None, total, time.monotonic() - started_at, tuple(listing.foreign))


def leave_state(output: Path, plan: RestorePlan, sha256: str) -> bool:
    """After a restore of the latest state: let `replicate` continue its generation (state.record_restored)."""
    return record_restored(output, plan.generation, plan.txid, plan.snapshot.time_us, sha256)
