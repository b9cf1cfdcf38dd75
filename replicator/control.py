"""The control socket: how `replicator wait`, `replicator status` and the Python API reach a running replicator.

Rules:
1. One Unix socket per database, `control.sock` in its state directory (state.py), created by the process
   that holds the database's lock, mode 0600 (only the app's own user), removed when it lets go. There is
   no network listener. A socket left by a killed process is replaced by the next lock holder.
2. One request per connection, one JSON object per line each way:
       {"op": "wait", "txid": null, "timeout": 5}  ->  {"ok": true, "generation": "<16 hex>", "txid": 42}
       {"op": "status"}                            ->  {"ok": true, ...the database's status...}
   and on failure {"ok": false, "error": "<kind>", "message": "<one line>"}, kind one of `ERRORS`.
3. One thread accepts on every socket (a selector), so a thousand idle databases cost no threads; each
   request is answered on a thread of its own, since a wait blocks. At most MAX_REQUESTS at once.
4. Unix socket paths are limited to ~107 bytes; a longer state directory is reached through
   /proc/self/fd (the directory opened by descriptor), so any database path works.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from .barrier import Position, WaitFailed, WaitTimeout
from .errors import ReplicatorError

log = logging.getLogger(__name__)

MAX_REQUESTS = 64
MAX_LINE = 4096
RAISED: dict[str, type[ReplicatorError]] = {"timeout": WaitTimeout, "failed": WaitFailed}  # kind <-> exception
ERRORS = (*RAISED, "bad request", "busy")


class Served(Protocol):
    """What a database's replicator answers through its socket (replicate.Replicator)."""

    def wait(self, txid: int | None = None, timeout: float | None = None) -> Position: ...

    def status(self) -> dict[str, Any]: ...


class NotRunning(ReplicatorError):
    """No replicator answers for this database (none is running, or it has not opened the database yet)."""


class ControlError(ReplicatorError):
    """The replicator answered a control request with a failure."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """Rule 4: a name for `path` that fits a Unix socket address."""
    if len(os.fsencode(path)) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


class ControlServer:
    """Serves every database's socket in this process (rules 1-3), from `start` until `close`."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._sockets: dict[Path, socket.socket] = {}
        self._slots = threading.BoundedSemaphore(MAX_REQUESTS)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def add(self, path: Path, served: Served) -> None:
        """Listen on `path` for `served` (the caller holds the database's lock: an old socket there is stale)."""
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _address(path) as address:
                old = os.umask(0o177)  # created 0600: never a moment when others could connect
                try:
                    sock.bind(address)
                finally:
                    os.umask(old)
            sock.listen(16)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            log.warning("no control socket for %s (%s): `replicator wait` and `status` cannot reach it", path, exc)
            return
        with self._lock:
            self._sockets[path] = sock
            self._selector.register(sock, selectors.EVENT_READ, served)
        self._wake_w.send(b"x")

    def remove(self, path: Path) -> None:
        with self._lock:
            sock = self._sockets.pop(path, None)
            if sock is not None:
                self._selector.unregister(sock)
                sock.close()
        if sock is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def close(self) -> None:
        for path in list(self._sockets):
            self.remove(path)
        self._closed = True
        self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _serve(self) -> None:
        while not self._closed:
            for key, _ in self._selector.select():
                if key.data is None:
                    self._wake_r.recv(4096)
                    continue
                with self._lock:
                    if key.fileobj not in self._sockets.values():
                        continue  # removed meanwhile
                    try:
                        conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    except OSError:
                        continue
                if not self._slots.acquire(blocking=False):
                    _reply(conn, _failure("busy", "too many control requests at once; try again"))
                    continue
                threading.Thread(
                    target=self._answer, args=(conn, key.data), name="control-request", daemon=True
                ).start()

    def _answer(self, conn: socket.socket, served: Served) -> None:
        try:
            conn.settimeout(5)
            request = _read_line(conn)
            conn.settimeout(None)
            _reply(conn, answer(served, request))
        except (OSError, ValueError) as exc:
            log.debug("control request failed: %s", exc)
        finally:
            conn.close()
            self._slots.release()


def answer(served: Served, request: Any) -> dict[str, Any]:
    """Rule 2: one request's reply."""
    if not isinstance(request, dict) or request.get("op") not in ("wait", "status"):
        return _failure("bad request", f"unknown request {request!r:.200}")
    if request["op"] == "status":
        return {"ok": True, **served.status()}
    txid, timeout = request.get("txid"), request.get("timeout")
    if not (txid is None or (isinstance(txid, int) and txid >= 0)):
        return _failure("bad request", f"txid must be a non-negative integer, not {txid!r:.50}")
    if not (timeout is None or (isinstance(timeout, int | float) and timeout >= 0)):
        return _failure("bad request", f"timeout must be a non-negative number, not {timeout!r:.50}")
    try:
        position = served.wait(txid, timeout)
    except (WaitTimeout, WaitFailed) as exc:
        return _failure(next(kind for kind, raised in RAISED.items() if isinstance(exc, raised)), str(exc))
    return {"ok": True, "generation": f"{position.generation:016x}", "txid": position.txid}


def _failure(kind: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": kind, "message": message}


def _reply(conn: socket.socket, reply: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(reply).encode() + b"\n")


def _read_line(conn: socket.socket) -> Any:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(MAX_LINE)
        if not chunk or len(data) + len(chunk) > MAX_LINE:
            raise ValueError("no complete request line")
        data += chunk
    return json.loads(data)


def request(path: Path, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Client side: send one request to the socket at `path` and return the successful reply.

    Raises NotRunning if nothing listens there; a failure the replicator answered is raised as its kind:
    WaitTimeout, WaitFailed, or ControlError.
    `timeout` bounds the whole exchange (None: as long as the request takes).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            with _address(path) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise NotRunning(f"no replicator is running for this database (nothing answers on {path})") from None
        except PermissionError:
            raise NotRunning(f"{path} belongs to another user: run as the replicator's user") from None
        sock.settimeout(timeout)
        sock.sendall(json.dumps(payload).encode() + b"\n")
        try:
            reply = _read_line(sock)
        except (ValueError, OSError) as exc:
            raise NotRunning(f"the replicator did not answer on {path} ({exc or 'it stopped'})") from None
    finally:
        sock.close()
    if not isinstance(reply, dict) or not reply.get("ok"):
        reply = reply if isinstance(reply, dict) else {}
        kind, message = str(reply.get("error", "failed")), str(reply.get("message", "an unreadable reply"))
        if kind in RAISED:
            raise RAISED[kind](message)
        raise ControlError(kind, message)
    return reply
