"""A consistent image of the database at our captured position, streamed page by page.

The image is the database file overlaid with the WAL frames of the current WAL life up to our position
(hard-parts.md section 3). It is consistent because of what our pin guarantees (see sqlite.py and
docs/LIFECYCLE.md): no checkpoint copies frames beyond our position into the database file, so every page
the file holds is either untouched since the WAL life began or has its newer version in the overlay. The
one exception is a WAL restart, possible only once the life was wholly copied into the file: overlay
frames are re-verified as they are read (batch.PageReader), and one that no longer verifies is taken from
the file, which then holds that very version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from . import segment, wal
from .batch import PageReader
from .walfile import WalFile

_CHUNK_PAGES = 256
ReadAt = Callable[[int, int], bytes]  # (offset, length) -> bytes of the database file


def overlay_of(transactions: Iterable[wal.Transaction]) -> dict[int, int]:
    """For each page the transactions change: the frame of its last version."""
    frames: dict[int, int] = {}
    for t in transactions:
        for i, pgno in enumerate(t.pgnos):
            frames[pgno] = t.first_frame + i
    return frames


def build_overlay(wal_file: WalFile, header: wal.WalHeader | None, end_frame: int) -> dict[int, int]:
    """For each page changed in frames [0, end_frame) of the WAL life `header`: its last frame."""
    if header is None or end_frame == 0:
        return {}
    scanner = wal.FrameScanner(header)
    frames = overlay_of(wal_file.scan(scanner, end_frame))
    if scanner.committed_frames != end_frame:
        current = wal_file.header()
        if current is None or current.salt != header.salt:
            # Restarted since we captured it: a restart needs the whole life copied into the database
            # file first, so the file alone is the image.
            return {}
        raise RuntimeError(f"the WAL no longer holds the {end_frame} frames we captured")
    return frames


def image_chunks(
    read_db: ReadAt, read_pages: PageReader, overlay: dict[int, int], *, db_size: int, page_size: int
) -> Iterator[bytes]:
    """The database image, pages 1..db_size, in chunks of whole pages."""
    for first in range(1, db_size + 1, _CHUNK_PAGES):
        count = min(_CHUNK_PAGES, db_size - first + 1)
        chunk = bytearray(read_db((first - 1) * page_size, count * page_size))
        chunk.extend(bytes(count * page_size - len(chunk)))  # pages past the file's end read as zeros
        wanted = [(p, overlay[p]) for p in range(first, first + count) if p in overlay]
        for (pgno, _), page in zip(wanted, read_pages(wanted), strict=True):
            offset = (pgno - first) * page_size
            chunk[offset : offset + page_size] = page
        yield bytes(chunk)


def write_snapshot(
    out: segment.Writable,
    read_db: ReadAt,
    read_pages: PageReader,
    overlay: dict[int, int],
    *,
    db_size: int,
    page_size: int,
    generation: int,
    txid: int,
    time_us: int,
    level: int = segment.DEFAULT_LEVEL,
) -> segment.SegmentHeader:
    snap = segment.SegmentHeader(
        segment.Kind.SNAPSHOT, page_size, db_size, generation, txid, txid, time_us, time_us, 0, db_size
    )
    writer = segment.SegmentWriter(out, snap, level=level)
    for chunk in image_chunks(read_db, read_pages, overlay, db_size=db_size, page_size=page_size):
        writer.write_image(chunk)
    writer.close()
    return snap
