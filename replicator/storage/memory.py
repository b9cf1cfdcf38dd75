"""An in-memory replica: the reference behaviour for unit tests."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable, Iterator

from ..errors import ObjectNotFound
from .base import Body, ObjectInfo, Readable, after, check_key


class MemoryClient:
    def __init__(self, name: str = "test") -> None:
        self._objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._name = name

    @property
    def url(self) -> str:
        return f"memory://{self._name}"

    def list(self, prefix: str = "", *, start_after: str = "", limit: int | None = None) -> Iterator[ObjectInfo]:
        with self._lock:
            items = sorted((k, len(v)) for k, v in self._objects.items() if k.startswith(prefix))
        return iter(after([ObjectInfo(k, n) for k, n in items], start_after, limit))

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            data = self._objects.get(check_key(key))
        if data is None:
            raise ObjectNotFound(f"{self.url}/{key}: no such object")
        end = len(data) if length is None else offset + length
        return data[offset:end]

    def stream(self, key: str, offset: int = 0) -> Readable:
        return io.BytesIO(self.get(key, offset))

    def put(self, key: str, body: Body) -> None:
        data = body if isinstance(body, bytes) else body.read()
        with self._lock:
            self._objects[check_key(key)] = bytes(data)

    def swap(self, key: str, expected: bytes, body: bytes) -> bool:
        with self._lock:
            if self._objects.get(check_key(key)) != expected:
                return False
            self._objects[key] = bytes(body)
            return True

    def delete(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._objects.pop(check_key(key), None)

    def exists(self, key: str) -> bool:
        with self._lock:
            return check_key(key) in self._objects
