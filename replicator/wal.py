"""Sans-IO reader of SQLite's write-ahead log (sqlite.org/fileformat2.html section 4).

Rules this module keeps:

1. Bytes in, records out. No files, clocks or threads: the caller reads the WAL and feeds the bytes.
2. A frame is valid only if its salts equal the header's, its page number is not zero and the cumulative
   checksum chain holds from the header through it: exactly SQLite's own rule (walDecodeFrame). The first
   invalid frame ends the WAL; nothing after it counts, whatever it contains.
3. Only frames up to the last valid commit frame (one whose "db size after commit" is non-zero) are
   committed. Valid frames after it belong to a transaction still being written, or abandoned.

Theory of operation: the checksum is a Fletcher-like pair (s0, s1) updated over 32-bit words taken two at
a time: s0 += a + s1; s1 += b + s0 (mod 2**32). Each step is linear, (s0, s1) <- M (s0, s1) + (a, a + b)
with M = [[1, 1], [1, 2]], so a whole frame (two header words and the page) is
M**K (seed) + W . C, where C is a per-page-size coefficient matrix. That turns verification into one integer
matrix product per batch of frames (numpy), seeded for each frame by the checksum stored in the frame
before it. Only the valid prefix is kept, so seeding from stored values is exact where it matters.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from .errors import InvalidWalHeader

WAL_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
MAGIC_LITTLE_ENDIAN = 0x377F0682
MAGIC_BIG_ENDIAN = 0x377F0683
WAL_FORMAT_VERSION = 3007000
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 65536

# Frames verified per numpy batch: bounds the uint64 temporaries to a few MiB whatever the input size.
_BATCH_BYTES = 1 << 20
_MASK32 = 0xFFFFFFFF

Checksum = tuple[int, int]
_HEADER = struct.Struct(">IIIIIIII")
_FRAME_HEADER = struct.Struct(">IIIIII")
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class WalHeader:
    """The WAL header. `salt` identifies one life of the WAL: a restart writes new salts."""

    big_endian: bool
    page_size: int
    checkpoint_seq: int
    salt: tuple[int, int]
    checksum: Checksum

    @property
    def frame_size(self) -> int:
        return FRAME_HEADER_SIZE + self.page_size

    def frame_offset(self, frame: int) -> int:
        """Byte offset in the WAL file of 0-based frame number `frame`."""
        return WAL_HEADER_SIZE + frame * self.frame_size


@dataclass(frozen=True, slots=True)
class FrameHeader:
    pgno: int
    db_size: int  # pages in the database after commit; 0 unless this is a commit frame
    salt: tuple[int, int]
    checksum: Checksum


@dataclass(frozen=True, slots=True)
class Transaction:
    """One committed transaction: a run of frames ending in a commit frame."""

    first_frame: int
    pgnos: tuple[int, ...]  # page number of each frame, in WAL order (a page may repeat)
    db_size: int
    checksum: Checksum  # cumulative checksum after the commit frame

    @property
    def frame_count(self) -> int:
        return len(self.pgnos)

    @property
    def end_frame(self) -> int:
        """Frame number just past the commit frame."""
        return self.first_frame + len(self.pgnos)


def checksum(data: Buffer, seed: Checksum = (0, 0), *, big_endian: bool = False) -> Checksum:
    """SQLite's WAL checksum over `data` (a multiple of 8 bytes), in plain Python: the reference."""
    mv = memoryview(data).cast("B")
    if len(mv) % 8:
        raise ValueError("checksum input must be a multiple of 8 bytes")
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(mv) // 4}I", mv)
    s0, s1 = seed
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & _MASK32
        s1 = (s1 + words[i + 1] + s0) & _MASK32
    return s0, s1


def parse_header(data: Buffer) -> WalHeader:
    """Decode and verify the 32-byte WAL header, as SQLite's recovery does."""
    mv = memoryview(data).cast("B")
    if len(mv) < WAL_HEADER_SIZE:
        raise InvalidWalHeader(f"WAL header is {len(mv)} bytes, expected {WAL_HEADER_SIZE}")
    magic, version, page_size, seq, salt1, salt2, ck1, ck2 = _HEADER.unpack_from(mv)
    if magic not in (MAGIC_LITTLE_ENDIAN, MAGIC_BIG_ENDIAN):
        raise InvalidWalHeader(f"bad WAL magic 0x{magic:08x}")
    if version != WAL_FORMAT_VERSION:
        raise InvalidWalHeader(f"unsupported WAL format version {version}")
    if not MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE or page_size & (page_size - 1):
        raise InvalidWalHeader(f"invalid page size {page_size}")
    big_endian = magic == MAGIC_BIG_ENDIAN
    if checksum(mv[:24], big_endian=big_endian) != (ck1, ck2):
        raise InvalidWalHeader("WAL header checksum mismatch")
    return WalHeader(big_endian, page_size, seq, (salt1, salt2), (ck1, ck2))


def parse_frame_header(data: Buffer) -> FrameHeader:
    pgno, db_size, salt1, salt2, ck1, ck2 = _FRAME_HEADER.unpack_from(data)
    return FrameHeader(pgno, db_size, (salt1, salt2), (ck1, ck2))


def _matmul2(m: tuple[int, int, int, int], n: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    a, b, c, d = m
    e, f, g, h = n
    return (
        (a * e + b * g) & _MASK32,
        (a * f + b * h) & _MASK32,
        (c * e + d * g) & _MASK32,
        (c * f + d * h) & _MASK32,
    )


@lru_cache(maxsize=16)
def _coefficients(
    page_size: int,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """(C, P) for one frame: checksum_out = P @ seed + words @ C (mod 2**32).

    words are the frame's checksummed 32-bit words: the first two header words, then the page.
    """
    pairs = 1 + page_size // 8
    coeff = np.empty((2 * pairs, 2), dtype=np.uint64)
    power = (1, 0, 0, 1)  # M**0, built up from the last pair backwards
    step = (1, 1, 1, 2)
    for j in range(pairs - 1, -1, -1):
        p00, p01, p10, p11 = power
        coeff[2 * j] = ((p00 + p01) & _MASK32, (p10 + p11) & _MASK32)
        coeff[2 * j + 1] = (p01, p11)
        power = _matmul2(power, step)
    seed_matrix = np.array(power, dtype=np.uint64).reshape(2, 2)
    return coeff, seed_matrix


def verify_frames(header: WalHeader, frames: Buffer, seeds: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
    """Check each of n contiguous frames on its own: salts, page number, and checksum from its seed.

    `seeds[i]` is the cumulative checksum before frame i (the previous frame's stored checksum, or the
    header's for frame 0), so the result says which frames are intact links of the chain.
    """
    mv = memoryview(frames).cast("B")
    n = len(seeds)
    page_words = header.page_size // 4
    order = ">" if header.big_endian else "<"
    words = np.frombuffer(mv, dtype=f"{order}u4", count=n * (6 + page_words)).reshape(n, 6 + page_words)
    # Header fields are always big-endian, whatever the checksum byte order.
    fields = np.frombuffer(mv, dtype=">u4", count=n * (6 + page_words)).reshape(n, 6 + page_words)[:, :6]
    coeff, seed_matrix = _coefficients(header.page_size)
    expected = words[:, 6:].astype(np.uint64) @ coeff[2:]
    expected += words[:, :2].astype(np.uint64) @ coeff[:2]
    expected += seeds @ seed_matrix.T
    expected &= np.uint64(_MASK32)
    salt1, salt2 = header.salt
    ok: npt.NDArray[np.bool_] = (
        (fields[:, 2] == salt1)
        & (fields[:, 3] == salt2)
        & (fields[:, 0] != 0)
        & (expected[:, 0] == fields[:, 4])
        & (expected[:, 1] == fields[:, 5])
    )
    return ok


class FrameScanner:
    """Verifies the frames of one WAL life incrementally and reports each transaction once committed.

    Feed it the bytes that follow frame `next_frame`; it consumes whole valid frames and stops at the first
    invalid one (which, in a live WAL, may be a frame still being written: feed it again later). A caller
    that resumes from a known position passes that frame number and the checksum stored in the frame
    before it (or the header's checksum for frame 0).
    """

    def __init__(self, header: WalHeader, next_frame: int = 0, seed: Checksum | None = None) -> None:
        self.header = header
        self.next_frame = next_frame
        self.checksum: Checksum = header.checksum if seed is None else seed
        self.stopped_at_invalid = False
        self._pending_first = next_frame
        self._pending: list[int] = []  # page numbers of frames after the last commit frame

    @property
    def committed_frames(self) -> int:
        """Frames up to and including the last commit frame seen."""
        return self._pending_first

    @property
    def pending_frames(self) -> int:
        """Valid frames after the last commit frame (an open or abandoned transaction)."""
        return self.next_frame - self._pending_first

    def feed(self, data: Buffer) -> list[Transaction]:
        """Consume the valid whole frames at the start of `data`; return the transactions they commit."""
        mv = memoryview(data).cast("B")
        size = self.header.frame_size
        count = len(mv) // size
        batch = max(1, _BATCH_BYTES // size)
        self.stopped_at_invalid = False
        done: list[Transaction] = []
        for start in range(0, count, batch):
            n = min(batch, count - start)
            valid = self._verify(mv[start * size : (start + n) * size], n)
            if valid:
                done.extend(self._accept(mv[start * size : (start + valid) * size], valid))
            if valid < n:
                self.stopped_at_invalid = True
                break
        return done

    def _verify(self, chunk: memoryview, n: int) -> int:
        """Number of leading frames of `chunk` that are valid, given the chain so far."""
        seeds = np.empty((n, 2), dtype=np.uint64)
        seeds[0] = self.checksum
        if n > 1:
            size = self.header.frame_size
            stored = np.ndarray((n - 1, 2), dtype=">u4", buffer=chunk, offset=16, strides=(size, 4))
            seeds[1:] = stored
        bad = np.flatnonzero(~verify_frames(self.header, chunk, seeds))
        return int(bad[0]) if len(bad) else n

    def _accept(self, chunk: memoryview, n: int) -> list[Transaction]:
        size = self.header.frame_size
        fields = np.ndarray((n, 6), dtype=">u4", buffer=chunk, strides=(size, 4))
        pgnos = fields[:, 0].tolist()  # one conversion per chunk: a busy app commits many tiny transactions
        commits = np.flatnonzero(fields[:, 1])
        ends = fields[commits][:, [1, 4, 5]].tolist()  # (db_size, checksum) of each commit frame
        done: list[Transaction] = []
        lo = 0
        for idx, (db_size, s0, s1) in zip(commits.tolist(), ends, strict=True):
            frames = self._pending + pgnos[lo : idx + 1] if self._pending else pgnos[lo : idx + 1]
            self._pending = []
            done.append(Transaction(self._pending_first, tuple(frames), db_size, (s0, s1)))
            self._pending_first += len(frames)
            lo = idx + 1
        if lo < n:
            self._pending += pgnos[lo:]
        self.next_frame += n
        self.checksum = (int(fields[n - 1, 4]), int(fields[n - 1, 5]))
        return done


@dataclass(frozen=True, slots=True)
class WalContents:
    """What a whole WAL file holds, as SQLite would recover it. `header` is None for an empty/invalid WAL."""

    header: WalHeader | None
    transactions: list[Transaction] = field(default_factory=list)
    valid_frames: int = 0

    @property
    def committed_frames(self) -> int:
        return self.transactions[-1].end_frame if self.transactions else 0

    @property
    def db_size(self) -> int | None:
        """Database size in pages after the last committed transaction, or None without one."""
        return self.transactions[-1].db_size if self.transactions else None


def read_wal(data: Buffer) -> WalContents:
    """Every committed transaction in a complete WAL image (a convenience over FrameScanner)."""
    mv = memoryview(data).cast("B")
    try:
        header = parse_header(mv)
    except InvalidWalHeader:
        return WalContents(None)
    scanner = FrameScanner(header)
    transactions = scanner.feed(mv[WAL_HEADER_SIZE:])
    return WalContents(header, transactions, scanner.next_frame)


WAL_INDEX_HEADER_SIZE = 136  # two copies of the 48-byte header, then the checkpoint info
_INDEX_HEADER = struct.Struct("=IIIBBHII2I8s")  # up to aCksum: 40 bytes, native byte order


@dataclass(frozen=True, slots=True)
class WalIndexHeader:
    """The wal-index (-shm) header: SQLite's own record of the committed end of the WAL.

    sqlite.org/walformat.html section 2.1. Native byte order; salts kept as the WAL header's raw bytes.
    """

    change: int  # incremented by every transaction
    page_size: int
    max_frame: int  # frames 1..max_frame are committed; the last is a commit frame
    db_size: int  # pages
    frame_checksum: Checksum  # cumulative checksum after frame max_frame
    salt: tuple[int, int]
    backfilled: int  # nBackfill: frames already copied into the database file


def parse_wal_index(data: Buffer) -> WalIndexHeader | None:
    """Decode the -shm header; None if it is uninitialised or torn (two copies differ): read it again."""
    mv = memoryview(data).cast("B")
    if len(mv) < WAL_INDEX_HEADER_SIZE or bytes(mv[:48]) != bytes(mv[48:96]):
        return None
    version, _, change, is_init, _, page_size, max_frame, db_size, ck1, ck2, salt = _INDEX_HEADER.unpack_from(mv)
    if not is_init or version != WAL_FORMAT_VERSION:
        return None
    native_big = struct.pack("=I", 1) == struct.pack(">I", 1)
    if checksum(mv[:40], big_endian=native_big) != struct.unpack_from("=II", mv, 40):
        return None
    (backfilled,) = struct.unpack_from("=I", mv, 96)
    page_size = 65536 if page_size == 1 else page_size
    return WalIndexHeader(change, page_size, max_frame, db_size, (ck1, ck2), struct.unpack(">II", salt), backfilled)
