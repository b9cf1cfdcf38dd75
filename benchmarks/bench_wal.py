"""WAL parse + verify and segment encode throughput, next to this machine's ceilings.

    python -m benchmarks.bench_wal [--wal-mb 256] [--repeat 3] [--level 1]

Builds a WAL of 4 KiB pages with real SQLite (half random, half text rows, as Litestream's anchors used),
then times, from the page cache:
  read      sequential read of the WAL file (the ceiling for anything that reads it)
  verify    wal.FrameScanner over the file in 64 MiB reads: header, salts, checksum chain, commits
  zstd      zstd alone on the same page images (one stream, the floor for any compressed format)
  encode    the shipper's encode path: the WAL's transactions folded into one commit record per 64 MiB
            batch (last version of each page), written with SegmentWriter
Each figure is the median of --repeat runs, with the range; MB are 10**6 bytes of WAL (or of pages for zstd).
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zstandard

from replicator import segment, wal

CHUNK = 64 << 20


def build_wal(path: Path, target_mb: int, seed: int = 7) -> Path:
    """A WAL of about target_mb, written by stdlib sqlite3 with checkpoints off."""
    rng = random.Random(seed)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, data BLOB)")
    words = [rng.randbytes(6).hex() for _ in range(2000)]
    wal_path = Path(f"{path}-wal")
    while not wal_path.exists() or wal_path.stat().st_size < target_mb * 1_000_000:
        rows = []
        for i in range(1000):
            if i % 2:
                rows.append((rng.randbytes(1024),))
            else:
                rows.append((" ".join(rng.choices(words, k=80)).encode()[:1024],))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t(data) VALUES (?)", rows)
        conn.execute("COMMIT")
    # Keep the connection open while we copy: closing the last connection would checkpoint the WAL away.
    copy = path.with_suffix(".wal-copy")
    copy.write_bytes(wal_path.read_bytes())
    conn.close()
    return copy


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def sequential_read(path: Path) -> None:
    buf = bytearray(8 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


class NullSink:
    """Counts what an encoder writes; stands in for the spool file without measuring the disk."""

    def __init__(self) -> None:
        self.length = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = memoryview(data).nbytes
        self.length += n
        return n


def verify_file(path: Path) -> int:
    """Parse and verify the whole WAL in CHUNK-sized reads into one reused buffer, as the shipper will."""
    with open(path, "rb", buffering=0) as f:
        header = wal.parse_header(f.read(wal.WAL_HEADER_SIZE))
        scanner = wal.FrameScanner(header)
        buf = bytearray(CHUNK - CHUNK % header.frame_size)
        view = memoryview(buf)
        count = 0
        while True:
            f.seek(header.frame_offset(scanner.next_frame))
            n = f.readinto(buf)
            before = scanner.next_frame
            count += len(scanner.feed(view[:n]))
            if scanner.next_frame == before:
                return count


def page_images(data: bytes, header: wal.WalHeader, frames: int) -> np.ndarray:
    rows = np.frombuffer(data, dtype=np.uint8, offset=wal.WAL_HEADER_SIZE, count=frames * header.frame_size)
    return rows.reshape(frames, header.frame_size)[:, wal.FRAME_HEADER_SIZE :]


def zstd_alone(contiguous: memoryview, level: int) -> int:
    """zstd streaming over the page images laid end to end: the floor for any compressed format."""
    sink = NullSink()
    writer = zstandard.ZstdCompressor(level=level).stream_writer(sink, closefd=False)  # type: ignore[arg-type]
    for start in range(0, len(contiguous), 1 << 20):
        writer.write(contiguous[start : start + (1 << 20)])
    writer.flush(zstandard.FLUSH_FRAME)
    return sink.length


def encode_path(data: bytes, contents: wal.WalContents, level: int) -> int:
    """Fold transactions into one commit record per CHUNK of WAL, shipping each page's last version once."""
    header = contents.header
    assert header is not None
    frames = page_images(data, header, contents.committed_frames)
    txs = contents.transactions
    per_batch = max(1, CHUNK // header.frame_size)
    written = 0
    txid = 0
    i = 0
    while i < len(txs):
        j = i
        while j < len(txs) and txs[j].end_frame - txs[i].first_frame < per_batch:
            j += 1
        j = max(j, i + 1)
        batch = txs[i:j]
        first, end = batch[0].first_frame, batch[-1].end_frame
        pgnos = np.fromiter((p for t in batch for p in t.pgnos), dtype=np.int64, count=end - first)
        # Last occurrence of each page: unique over the reversed list.
        uniq, rev_idx = np.unique(pgnos[::-1], return_index=True)
        idx = first + (len(pgnos) - 1 - rev_idx)
        db_size = batch[-1].db_size
        keep = uniq <= db_size
        uniq, idx = uniq[keep], idx[keep]
        now = time.time_ns() // 1000
        commit = segment.Commit(txid + len(batch), now, db_size, tuple(uniq.tolist()))
        h = segment.SegmentHeader(
            segment.Kind.SEGMENT, header.page_size, db_size, 1, txid + 1, txid + len(batch), now, now, 1, len(uniq)
        )
        sink = NullSink()
        writer = segment.SegmentWriter(sink, h, level=level)
        writer.write_commit(commit, (frames[k].data for k in idx.tolist()))  # views into the WAL: no copy
        writer.close()
        written += sink.length
        txid += len(batch)
        i = j
    return written


def report(name: str, mb: float, times: list[float], ceiling: float | None = None) -> float:
    rates = sorted(mb / t for t in times)
    med = statistics.median(rates)
    extra = f"  ({med / ceiling:.2f}x of that ceiling)" if ceiling else ""
    print(f"{name:<34} {med:9.0f} MB/s  [{rates[0]:.0f}-{rates[-1]:.0f}]{extra}")
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wal-mb", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--level", type=int, default=segment.DEFAULT_LEVEL)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-wal-") as tmp:
        print(f"building a {args.wal_mb} MB WAL with SQLite {sqlite3.sqlite_version} ...", flush=True)
        path = build_wal(Path(tmp) / "bench.db", args.wal_mb)
        data = path.read_bytes()
        contents = wal.read_wal(data)
        assert contents.header is not None
        wal_mb = len(data) / 1e6
        pages = page_images(data, contents.header, contents.committed_frames)
        page_mb = pages.size / 1e6
        print(
            f"WAL: {wal_mb:.0f} MB, {contents.valid_frames} frames of {contents.header.page_size} B, "
            f"{len(contents.transactions)} transactions; CPU: {os.cpu_count()} cores\n"
        )
        read = report("read (page cache, ceiling)", wal_mb, timed(lambda: sequential_read(path), args.repeat))
        report("parse + verify (read + scan)", wal_mb, timed(lambda: verify_file(path), args.repeat), read)
        report("parse + verify (in memory)", wal_mb, timed(lambda: wal.read_wal(data), args.repeat), read)
        contiguous = memoryview(np.ascontiguousarray(pages)).cast("B")
        zstd_times = timed(lambda: zstd_alone(contiguous, args.level), args.repeat)
        zstd_rate = report(f"zstd level {args.level} alone (pages)", page_mb, zstd_times)
        enc_times = timed(lambda: encode_path(data, contents, args.level), args.repeat)
        enc_rate = report(f"encode path, level {args.level} (WAL MB)", wal_mb, enc_times)
        size = encode_path(data, contents, args.level)
        t_zstd, t_enc = statistics.median(zstd_times), statistics.median(enc_times)
        print(
            f"\nencode path time / zstd-alone time: {t_enc / t_zstd:.2f}x (target <= 1.5x); "
            f"page MB/s through the encoder: {page_mb / t_enc:.0f} vs zstd {zstd_rate:.0f}; "
            f"WAL MB/s {enc_rate:.0f}"
        )
        print(f"compressed segments: {size / 1e6:.1f} MB = {size / len(data):.3f} of WAL bytes")


if __name__ == "__main__":
    main()
