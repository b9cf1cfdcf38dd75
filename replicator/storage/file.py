"""A replica in a local directory (or a mounted volume): write to a temporary name, fsync, rename."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import (
    ObjectNotFound,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from .base import Body, ObjectInfo, Readable, after, check_key

_TEMP_PREFIX = ".tmp-"  # never a valid key segment, so never listed


class FileClient:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def list(self, prefix: str = "", *, start_after: str = "", limit: int | None = None) -> Iterator[ObjectInfo]:
        # Walk only below the deepest directory the prefix names.
        head, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*head.split("/")) if head else self.root
        found: list[ObjectInfo] = []
        with _classified(f"list {self.url}/{prefix}"):
            for dirpath, dirnames, filenames in os.walk(start):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel = Path(dirpath).relative_to(self.root).as_posix()
                for name in filenames:
                    if name.startswith("."):
                        continue
                    key = name if rel == "." else f"{rel}/{name}"
                    if key.startswith(prefix):
                        found.append(ObjectInfo(key, os.stat(os.path.join(dirpath, name)).st_size))
        found.sort(key=lambda o: o.key)
        return iter(after(found, start_after, limit))

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(key)
        with _classified(f"get {self.url}/{key}"), open(path, "rb") as f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    def stream(self, key: str, offset: int = 0) -> Readable:
        with _classified(f"get {self.url}/{key}"):
            f = open(self._path(key), "rb")  # noqa: SIM115 - the caller reads it to the end; GC closes it
            f.seek(offset)
            return f

    def put(self, key: str, body: Body) -> None:
        with self.writer(key) as f:
            if isinstance(body, bytes):
                f.write(body)
            else:
                _copy(body, f)

    def swap(self, key: str, expected: bytes, body: bytes) -> bool:
        path = self._path(key)
        with _classified(f"put {self.url}/{key}"), _locked(path.parent / f"{_TEMP_PREFIX}{path.name}.lock"):
            try:
                current = path.read_bytes()
            except FileNotFoundError:
                return False
            if current != expected:
                return False
            with atomic_writer(path) as f:
                f.write(body)
            return True

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """Write an object as a stream: visible under `key` only once the block ends without an error."""
        with _classified(f"put {self.url}/{key}"), atomic_writer(self._path(key)) as f:
            yield f

    def path(self, key: str) -> Path:
        """Where an object lives on disk (for streaming it elsewhere)."""
        return self._path(key)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            with _classified(f"delete {self.url}/{key}"):
                try:
                    self._path(key).unlink()
                except FileNotFoundError:
                    pass

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An flock on `path` (created if needed, never listed: a temporary name) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _copy(source: BinaryIO, dest: BinaryIO) -> None:
    """Copy the rest of `source`: inside the kernel (sendfile) for real files, else through Python."""
    try:
        in_fd = source.fileno()
    except (AttributeError, OSError, ValueError):
        shutil.copyfileobj(source, dest, 1 << 20)
        return
    dest.flush()
    offset = source.tell()
    while sent := os.sendfile(dest.fileno(), in_fd, offset, 1 << 30):
        offset += sent
    source.seek(offset)


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A file that appears at `path` whole or not at all: temporary name, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or link in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _classified(what: str) -> Iterator[None]:
    """Turn OSError into the storage error classes, naming the operation."""
    try:
        yield
    except OSError as exc:
        detail = exc.strerror or str(exc)
        error: StorageError
        if isinstance(exc, FileNotFoundError):
            error = ObjectNotFound(f"{what}: no such object")
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR):
            error = PermanentStorageError(f"{what}: {detail}")
        else:  # ENOSPC, EIO, EINTR...: may clear up
            error = TransientStorageError(f"{what}: {detail}")
        raise error from exc
