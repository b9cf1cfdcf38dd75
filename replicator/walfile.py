"""Reading the live WAL file: the I/O half of wal.py (which stays pure)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from . import wal
from .errors import InvalidWalHeader

_CHUNK = 2 << 20  # bytes per read
_KEEP = 256 << 10  # buffers up to this size are reused across reads (a steady trickle of commits)
KEPT_FRAMES_BYTES = 8 << 20  # frames a scan keeps for `read_verified`, until `forget` (see `scan`)


class WalFile:
    """A read-only handle on `<db>-wal`, opened once: the one file SQLite appends to while we follow it.

    While our connections are open SQLite never deletes or recreates the WAL, so another file at the path
    means the database was deleted or replaced under us (`swapped`), never a continuation: we keep reading
    the file we opened, and the caller lets go.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._inode: int | None = None
        self._buffer = bytearray()
        self._kept: list[tuple[tuple[int, int], int, bytes]] = []  # (life's salt, first frame, whole frames)
        self._kept_bytes = 0

    def _read(self, fd: int, length: int, offset: int) -> memoryview:
        """pread into a buffer reused across calls (valid until the next read); large ones are not kept,
        so that a thousand followed databases do not each hold the largest read they ever made."""
        buffer = self._buffer
        if len(buffer) < length:
            buffer = bytearray(length)
            if length <= _KEEP:
                self._buffer = buffer
        view = memoryview(buffer)[:length]
        return view[: os.preadv(fd, [view], offset)]

    def close(self) -> None:
        self.forget()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._inode = None

    def _handle(self) -> int | None:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return None
            self._inode = os.fstat(self._fd).st_ino
        return self._fd

    def swapped(self) -> bool:
        """True if the path no longer names the WAL file we opened (deleted, or another one made)."""
        if self._fd is None:
            return False
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return True

    def header(self) -> wal.WalHeader | None:
        """The current WAL header, or None if the WAL is missing, empty or has no valid header."""
        fd = self._handle()
        if fd is None:
            return None
        data = os.pread(fd, wal.WAL_HEADER_SIZE, 0)
        try:
            return wal.parse_header(data)
        except InvalidWalHeader:
            return None

    def scan(self, scanner: wal.FrameScanner, end_frame: int) -> Iterator[wal.Transaction]:
        """Feed frames [scanner.next_frame, end_frame) to the scanner; yield each transaction it commits.

        The frames it verified are kept (up to KEPT_FRAMES_BYTES, until `forget`), so that encoding them
        right after reads and checksums nothing a second time (`read_verified`)."""
        fd = self._handle()
        if fd is None:
            return
        header = scanner.header
        per_read = max(1, _CHUNK // header.frame_size)
        while scanner.next_frame < end_frame:
            start = scanner.next_frame
            count = min(per_read, end_frame - start)
            data = self._read(fd, count * header.frame_size, header.frame_offset(start))
            transactions = scanner.feed(data)
            verified = (scanner.next_frame - start) * header.frame_size
            if verified and self._kept_bytes + verified <= KEPT_FRAMES_BYTES:
                self._kept.append((header.salt, start, bytes(data[:verified])))
                self._kept_bytes += verified
            yield from transactions
            if scanner.next_frame == start or scanner.stopped_at_invalid:
                return

    def forget(self) -> None:
        """Drop the frames `scan` kept (the caller's step is over: what it did not encode is read again)."""
        self._kept, self._kept_bytes = [], 0

    def _from_kept(self, header: wal.WalHeader, frames: Sequence[int], result: dict[int, bytes | None]) -> None:
        size, page = header.frame_size, header.page_size
        for salt, first, data in self._kept:
            if salt != header.salt:
                continue
            end = first + len(data) // size
            for frame in frames:
                if first <= frame < end:
                    start = (frame - first) * size + wal.FRAME_HEADER_SIZE
                    result[frame] = data[start : start + page]

    def frame_header(self, header: wal.WalHeader, frame: int) -> wal.FrameHeader:
        fd = self._handle()
        if fd is None:
            raise FileNotFoundError(self.path)
        return wal.parse_frame_header(os.pread(fd, wal.FRAME_HEADER_SIZE, header.frame_offset(frame)))

    def read_verified(self, header: wal.WalHeader, frames: Sequence[int]) -> dict[int, bytes | None]:
        """Page images of `frames` of the life `header`, verified; None where a frame no longer is.

        Frames a scan kept were verified as it read them. Any other frame is read again and verified like
        the scanner does, seeded by its predecessor's stored checksum, so it fails only if the WAL was
        restarted and overwritten since we scanned it.
        """
        result: dict[int, bytes | None] = dict.fromkeys(frames)
        if self._kept:
            self._from_kept(header, frames, result)
        missing = [frame for frame, page in result.items() if page is None]
        fd = self._handle() if missing else None
        if fd is None:
            return result
        size = header.frame_size
        for first, last in _runs(sorted(missing)):
            lo = max(first - 1, 0)
            data = self._read(fd, (last - lo + 1) * size, header.frame_offset(lo))
            if len(data) != (last - lo + 1) * size:
                continue
            n = last - first + 1
            stored = np.ndarray((last - lo + 1, 2), dtype=">u4", buffer=data, offset=16, strides=(size, 4))
            seeds = np.empty((n, 2), dtype=np.uint64)
            if first == 0:
                seeds[0] = header.checksum
                seeds[1:] = stored[: n - 1]
            else:
                seeds[:] = stored[:n]
            body = data[(first - lo) * size :]
            ok = wal.verify_frames(header, body, seeds)
            for i in range(n):
                if ok[i]:
                    start = i * size + wal.FRAME_HEADER_SIZE
                    result[first + i] = bytes(body[start : start + header.page_size])
        return result


def _runs(ordered: list[int]) -> Iterator[tuple[int, int]]:
    """Maximal runs of consecutive numbers: [1, 2, 3, 7, 8] -> (1, 3), (7, 8)."""
    if not ordered:
        return
    start = prev = ordered[0]
    for n in ordered[1:]:
        if n != prev + 1:
            yield start, prev
            start = n
        prev = n
    yield start, prev
