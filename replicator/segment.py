"""The container shipped to a replica: segments (committed transactions) and snapshots (a database image).

docs/FORMAT.md describes every byte. In short: a 72-byte header that says everything a planner needs
(kind, generation, txid range, page size, db size, commit times, counts) and carries its own CRC32, then
one zstd frame (with content size and content checksum), then a 16-byte trailer holding the body length
and a CRC32 over header and body. Readers verify all three and raise CorruptSegment naming the object.

Rules:
1. Content is verified from its own bytes, never trusted from a key name or from object metadata.
2. Encoding and decoding stream: memory stays bounded by one page (plus zstd's window) whatever the size.
3. Pages handed out by the reader are provisional until iteration ends without an error: the trailer is
   checked last, so a consumer must not publish its output before then.
"""

from __future__ import annotations

import enum
import io
import struct
import sys
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Protocol, cast

import zstandard

from .errors import CorruptSegment, UnsupportedFormatVersion
from .keys import MAX_LEVEL, ObjectKey, SegmentKey, SnapshotKey

MAGIC = b"RPLC"
TRAILER_MAGIC = b"RPLE"
FORMAT_VERSION = 2  # what this build writes: version 1 (no level byte) is still read, as level 0
READABLE_VERSIONS = (1, 2)
HEADER_SIZE = 72
TRAILER_SIZE = 16
COMMIT_HEADER_SIZE = 24
DEFAULT_LEVEL = 1

_HEADER = struct.Struct(">4sHBBIIQQQQQIIB3s")  # everything but the trailing CRC32
_TRAILER = struct.Struct(">4sQI")
_COMMIT = struct.Struct(">QQII")
_IMAGE_CHUNK = 1 << 20
_PGNO_CHUNK = 1 << 16  # page numbers decoded per read (256 KiB)
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

Buffer = bytes | bytearray | memoryview


class Kind(enum.IntEnum):
    SEGMENT = 1
    SNAPSHOT = 2


class Writable(Protocol):
    def write(self, data: Buffer, /) -> object: ...


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """What an object covers. For a snapshot, first_txid == last_txid and page_count == db_size."""

    kind: Kind
    page_size: int
    db_size: int  # pages in the database after the last commit
    generation: int
    first_txid: int
    last_txid: int
    first_time_us: int  # wall-clock time of the first commit, microseconds since the Unix epoch
    last_time_us: int
    commit_count: int
    page_count: int
    level: int = 0  # 0: a segment as shipped or a snapshot; 1..9: a compacted segment (compaction.py)

    def __post_init__(self) -> None:
        problem = _header_problem(self)
        if problem:
            raise ValueError(f"invalid segment header: {problem}")

    @property
    def content_size(self) -> int:
        """Bytes of the uncompressed body."""
        if self.kind is Kind.SNAPSHOT:
            return self.page_count * self.page_size
        return self.commit_count * COMMIT_HEADER_SIZE + self.page_count * (4 + self.page_size)

    def pack(self) -> bytes:
        head = _HEADER.pack(
            MAGIC,
            FORMAT_VERSION,
            self.kind,
            0,
            self.page_size,
            self.db_size,
            self.generation,
            self.first_txid,
            self.last_txid,
            self.first_time_us,
            self.last_time_us,
            self.commit_count,
            self.page_count,
            self.level,
            bytes(3),
        )
        return head + struct.pack(">I", zlib.crc32(head))


def _header_problem(h: SegmentHeader) -> str | None:
    if h.page_size < 512 or h.page_size > 65536 or h.page_size & (h.page_size - 1):
        return f"page size {h.page_size}"
    if not 0 <= h.db_size <= _U32 or not 0 <= h.page_count <= _U32 or not 0 <= h.commit_count <= _U32:
        return "count out of range"
    if not all(0 <= v <= _U64 for v in (h.generation, h.first_txid, h.last_txid, h.first_time_us)):
        return "field out of range"
    if not h.first_txid <= h.last_txid:
        return f"txid range {h.first_txid}..{h.last_txid} is reversed"
    if not 0 <= h.first_time_us <= h.last_time_us <= _U64:
        return "commit times are reversed"
    if not 0 <= h.level <= MAX_LEVEL:
        return f"level {h.level} is not in 0..{MAX_LEVEL}"
    if h.kind is Kind.SNAPSHOT:
        if h.level:
            return "a snapshot has no level"
        if h.first_txid != h.last_txid or h.commit_count != 0 or h.page_count != h.db_size:
            return "a snapshot covers one txid, has no commit records and holds db_size pages"
        if h.first_time_us != h.last_time_us:
            return "a snapshot has one time"
    elif h.commit_count < 1 or h.commit_count > h.last_txid - h.first_txid + 1:
        return f"{h.commit_count} commits cannot cover txids {h.first_txid}..{h.last_txid}"
    return None


def parse_header(data: Buffer, name: str) -> SegmentHeader:
    """Decode and verify the fixed header (the first HEADER_SIZE bytes of an object)."""
    mv = memoryview(data).cast("B")
    if len(mv) < HEADER_SIZE:
        raise CorruptSegment(name, f"truncated header ({len(mv)} of {HEADER_SIZE} bytes)")
    if bytes(mv[:4]) != MAGIC:
        raise CorruptSegment(name, "not a replicator object (bad magic)")
    (crc,) = struct.unpack_from(">I", mv, HEADER_SIZE - 4)
    if zlib.crc32(mv[: HEADER_SIZE - 4]) != crc:
        raise CorruptSegment(name, "header checksum mismatch")
    fields = _HEADER.unpack_from(mv)
    version, kind, flags, level, reserved = fields[1], fields[2], fields[3], fields[13], fields[14]
    if version not in READABLE_VERSIONS:
        raise UnsupportedFormatVersion(
            name,
            f"format version {version} is not supported (this build reads versions 1 and 2); upgrade",
        )
    if kind not in (Kind.SEGMENT, Kind.SNAPSHOT) or flags != 0:
        raise CorruptSegment(name, f"unknown kind {kind} or flags {flags:#x}")
    if reserved != bytes(3) or (version == 1 and level != 0):
        raise CorruptSegment(name, "reserved header bytes are not zero")
    try:
        return SegmentHeader(Kind(kind), *fields[4:14])
    except ValueError as exc:
        raise CorruptSegment(name, str(exc)) from None


@dataclass(frozen=True, slots=True, eq=False)
class Commit:
    """A commit record: the pages that change, with the state they produce.

    The reader hands out `pgnos` as a compact array (4 bytes a page); equality compares the numbers,
    whatever sequence holds them.
    """

    txid: int
    time_us: int
    db_size: int
    pgnos: Sequence[int]  # strictly increasing, each in 1..db_size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Commit):
            return NotImplemented
        same = (self.txid, self.time_us, self.db_size) == (other.txid, other.time_us, other.db_size)
        return same and list(self.pgnos) == list(other.pgnos)

    __hash__ = None  # type: ignore[assignment]


def _commit_problem(h: SegmentHeader, c: Commit, previous: Commit | None, index: int) -> str | None:
    """Why commit record number `index` cannot follow `previous` under header `h`; None if it can.

    The one statement of the commit-record rules in FORMAT.md: the writer refuses to write what the
    reader would refuse to read.
    """
    return _record_problem(h, c, previous, index) or _pgnos_problem(c.pgnos, c.db_size)


def _record_problem(h: SegmentHeader, c: Commit, previous: Commit | None, index: int) -> str | None:
    """The rules on a commit record's txid, time and db size (everything but its page numbers)."""
    if index >= h.commit_count:
        return f"more commit records than the {h.commit_count} the header declares"
    # A compacted segment's header states the whole range it covers; its first record may come later.
    first_time_ok = c.time_us >= h.first_time_us if h.level else c.time_us == h.first_time_us
    if previous is None and (c.txid < h.first_txid or not first_time_ok):
        return "first commit does not start the header's txid and time range"
    if previous is not None and (c.txid <= previous.txid or c.time_us < previous.time_us):
        return "txids must increase and times must not go back"
    if c.txid > h.last_txid or c.time_us > h.last_time_us:
        return "commit beyond the header's txid or time range"
    if index == h.commit_count - 1 and (c.txid, c.time_us, c.db_size) != (h.last_txid, h.last_time_us, h.db_size):
        return "last commit does not end the header's txid and time range at its db size"
    return None


def _pgnos_problem(pgnos: Sequence[int], db_size: int, after: int = 0) -> str | None:
    """The rule on page numbers: strictly increasing, each in 1..db_size (`after`: the run's previous one)."""
    previous = after
    for pgno in pgnos:
        if pgno <= previous:
            return "page numbers must strictly increase"
        previous = pgno
    if pgnos and (pgnos[0] < 1 or pgnos[-1] > db_size):
        return f"page numbers must lie in 1..{db_size}"
    return None


def key_for(header: SegmentHeader) -> ObjectKey:
    """The key an object with this header is stored under."""
    if header.kind is Kind.SNAPSHOT:
        return SnapshotKey(header.generation, header.last_txid, header.last_time_us)
    return SegmentKey(header.generation, header.first_txid, header.last_txid, header.last_time_us, header.level)


class _ChecksummingWriter:
    """Counts and CRCs the compressed body on its way to the destination."""

    def __init__(self, out: Writable, seed_crc: int) -> None:
        self.out = out
        self.crc = seed_crc  # continues the header's CRC, so the result covers header + body
        self.length = 0

    def write(self, data: Buffer) -> int:
        self.crc = zlib.crc32(data, self.crc)
        self.length += len(data)
        self.out.write(data)
        return len(data)


class SegmentWriter:
    """Streams one object to `out`. Declare everything in the header; the body must then match it."""

    def __init__(
        self,
        out: Writable,
        header: SegmentHeader,
        *,
        level: int = DEFAULT_LEVEL,
        threads: int = 0,
    ):
        self.header = header
        head = header.pack()
        out.write(head)
        self._out = out
        self._body = _ChecksummingWriter(out, zlib.crc32(head))
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=threads, write_checksum=True, write_content_size=True
        )
        cctx = zstandard.ZstdCompressor(compression_params=params)
        # zstandard's stubs ask for IO[bytes]; it only ever calls write().
        self._zstd = cctx.stream_writer(cast(IO[bytes], self._body), size=header.content_size, closefd=False)
        self._commits = 0
        self._pages = 0
        self._last: Commit | None = None
        self._closed = False

    def write_commit(self, commit: Commit, pages: Iterable[Buffer]) -> None:
        """One commit record; `pages` are the images of commit.pgnos, in order (any chunking)."""
        h = self.header
        if h.kind is not Kind.SEGMENT:
            raise ValueError("snapshots hold an image, not commit records")
        problem = _commit_problem(h, commit, self._last, self._commits)
        if problem:
            raise ValueError(f"commit {commit.txid}: {problem}")
        n = len(commit.pgnos)
        self._zstd.write(_COMMIT.pack(commit.txid, commit.time_us, commit.db_size, n))
        self._zstd.write(struct.pack(f">{n}I", *commit.pgnos))
        written = 0
        for page in pages:
            written += memoryview(page).nbytes
            self._zstd.write(page)
        if written != n * h.page_size:
            raise ValueError(f"commit {commit.txid}: {written} page bytes for {n} pages")
        self._commits += 1
        self._pages += n
        self._last = commit

    def write_image(self, data: Buffer) -> None:
        """The next bytes of a snapshot's database image (whole pages, in page order)."""
        if self.header.kind is not Kind.SNAPSHOT:
            raise ValueError("segments hold commit records, not an image")
        size = memoryview(data).nbytes
        if size % self.header.page_size:
            raise ValueError("snapshot image must be written in whole pages")
        self._pages += size // self.header.page_size
        self._zstd.write(data)

    def close(self) -> None:
        """Finish the zstd frame and write the trailer; raises if the body does not match the header."""
        if self._closed:
            return
        h = self.header
        if self._commits != h.commit_count or self._pages != h.page_count:
            raise ValueError(
                f"body has {self._commits} commits and {self._pages} pages; "
                f"header declared {h.commit_count} and {h.page_count}"
            )
        self._zstd.flush(zstandard.FLUSH_FRAME)
        self._out.write(_TRAILER.pack(TRAILER_MAGIC, self._body.length, self._body.crc))
        self._closed = True


def encode(
    header: SegmentHeader,
    commits: Iterable[tuple[Commit, Iterable[Buffer]]] = (),
    image: Buffer = b"",
    *,
    level: int = DEFAULT_LEVEL,
) -> bytes:
    """One-shot encoding into memory: for small objects and tests."""
    out = io.BytesIO()
    writer = SegmentWriter(out, header, level=level)
    if header.kind is Kind.SNAPSHOT:
        writer.write_image(image)
    for commit, pages in commits:
        writer.write_commit(commit, pages)
    writer.close()
    return out.getvalue()


class _BodyReader:
    """Hands out the bytes between header and trailer, holding back the last TRAILER_SIZE bytes read.

    The trailer is fixed-size at the very end, so a stream of unknown length can be split without a seek.
    """

    def __init__(self, source: Readable, seed_crc: int) -> None:
        self._source = source
        self._buf = bytearray()
        self._eof = False
        self.crc = seed_crc
        self.length = 0

    def read(self, size: int = -1) -> bytes:
        want = _IMAGE_CHUNK if size < 0 else size
        while not self._eof and len(self._buf) < want + TRAILER_SIZE:
            chunk = self._source.read(max(want + TRAILER_SIZE - len(self._buf), 64 << 10))
            if not chunk:
                self._eof = True
            self._buf += chunk
        out = bytes(self._buf[: max(0, min(want, len(self._buf) - TRAILER_SIZE))])
        del self._buf[: len(out)]
        self.crc = zlib.crc32(out, self.crc)
        self.length += len(out)
        return out

    def trailer(self) -> bytes:
        """The held-back bytes, once the body has been read to its end."""
        while not self._eof:
            chunk = self._source.read(64 << 10)
            if not chunk:
                self._eof = True
            self._buf += chunk
        return bytes(self._buf)


class SegmentReader:
    """Streams and verifies one object. Iterate commits() (segments) or image() (snapshots) to the end.

    Pass `expect`, the parsed key the object was listed under, to also check that the key tells the truth.
    """

    def __init__(self, source: Readable, name: str, expect: ObjectKey | None = None) -> None:
        self.name = name
        head = _read_exact(source, HEADER_SIZE)
        self.header = parse_header(head, name)
        if expect is not None and key_for(self.header) != expect:
            raise CorruptSegment(name, "header does not match the object's key (misnamed or misplaced object)")
        self._body = _BodyReader(source, zlib.crc32(head))
        dctx = zstandard.ZstdDecompressor()
        # zstandard's stubs ask for IO[bytes]; it only ever calls read().
        self._zstd = dctx.stream_reader(cast(IO[bytes], self._body), read_size=256 << 10, read_across_frames=False)
        self._remaining = self.header.content_size

    def _read(self, n: int, what: str) -> bytes:
        try:
            data = self._zstd.read(n)
            while len(data) < n:
                more = self._zstd.read(n - len(data))
                if not more:
                    break
                data += more
        except zstandard.ZstdError as exc:
            raise CorruptSegment(self.name, f"compressed body is damaged ({exc})") from None
        if len(data) < n:
            raise CorruptSegment(self.name, f"body ends inside {what} (truncated object?)")
        self._remaining -= n
        return data

    def commits(self) -> Iterator[tuple[Commit, Iterator[tuple[int, bytes]]]]:
        """Yield (commit, pages) per commit record; pages yields (pgno, image). Unread pages are skipped."""
        h = self.header
        if h.kind is not Kind.SEGMENT:
            raise CorruptSegment(self.name, "expected a segment, found a snapshot")
        last: Commit | None = None
        for index in range(h.commit_count):
            txid, time_us, db_size, n = _COMMIT.unpack(self._read(COMMIT_HEADER_SIZE, "a commit header"))
            problem = _record_problem(h, Commit(txid, time_us, db_size, ()), last, index)
            if problem:
                raise CorruptSegment(self.name, f"commit {txid}: {problem}")
            if n > self._remaining // (4 + h.page_size) or n > db_size:
                raise CorruptSegment(self.name, f"commit {txid} claims {n} pages, more than the body holds")
            commit = Commit(txid, time_us, db_size, self._pgnos(n, txid, db_size))
            pages = self._pages(commit)
            yield commit, pages
            for _ in pages:  # skip whatever the consumer did not read
                pass
            last = commit
        self._finish()

    def _pgnos(self, n: int, txid: int, db_size: int) -> array[int]:
        """A commit's page numbers, decoded and checked a bounded chunk at a time.

        A header can claim millions of pages in a few bytes: memory then grows only with page numbers that
        really arrive and pass the rules, never with what the header claims.
        """
        pgnos = array("I")
        for start in range(0, n, _PGNO_CHUNK):
            chunk = array("I", self._read(4 * min(_PGNO_CHUNK, n - start), "a page list"))
            if sys.byteorder == "little":
                chunk.byteswap()
            problem = _pgnos_problem(chunk, db_size, after=pgnos[-1] if pgnos else 0)
            if problem:
                raise CorruptSegment(self.name, f"commit {txid}: {problem}")
            pgnos.extend(chunk)
        return pgnos

    def _pages(self, commit: Commit) -> Iterator[tuple[int, bytes]]:
        for pgno in commit.pgnos:
            yield (
                pgno,
                self._read(self.header.page_size, f"page {pgno} of commit {commit.txid}"),
            )

    def image(self, chunk_size: int = _IMAGE_CHUNK) -> Iterator[bytes]:
        """Yield a snapshot's database image in chunks of whole pages."""
        h = self.header
        if h.kind is not Kind.SNAPSHOT:
            raise CorruptSegment(self.name, "expected a snapshot, found a segment")
        step = max(h.page_size, chunk_size - chunk_size % h.page_size)
        while self._remaining:
            yield self._read(min(step, self._remaining), "the database image")
        self._finish()

    def _finish(self) -> None:
        if self._remaining:
            raise CorruptSegment(self.name, f"the body is {self._remaining} bytes shorter than its header declares")
        try:
            extra = self._zstd.read(1)
            rest = self._body.read(1)
        except zstandard.ZstdError as exc:
            raise CorruptSegment(self.name, f"compressed body is damaged ({exc})") from None
        if extra or rest:
            raise CorruptSegment(self.name, "unexpected bytes after the body")
        trailer = self._body.trailer()
        if len(trailer) != TRAILER_SIZE:
            raise CorruptSegment(self.name, "truncated trailer")
        magic, length, crc = _TRAILER.unpack(trailer)
        if magic != TRAILER_MAGIC:
            raise CorruptSegment(self.name, "bad trailer magic (truncated or damaged object)")
        if length != self._body.length:
            raise CorruptSegment(self.name, f"body is {self._body.length} bytes, trailer says {length}")
        if crc != self._body.crc:
            raise CorruptSegment(self.name, "checksum mismatch")


def _read_exact(source: Readable, n: int) -> bytes:
    data = source.read(n)
    while len(data) < n:
        more = source.read(n - len(data))
        if not more:
            break
        data += more
    return data
