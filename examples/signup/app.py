"""A sign-up service on SQLite: the example app that runs under `replicator replicate --exec`.

    POST /register  {"email": ..., "password": ...}   201 created, 409 the email is taken, 400 bad input
    POST /login     {"email": ..., "password": ...}   200 the password is right, 401 otherwise
    GET  /healthz                                      200 once the database answers

Standard library only (http.server, sqlite3, hashlib.scrypt). Settings come from the environment:

    PORT           8080
    HOST           0.0.0.0
    DATABASE       /data/app.db
    SCRYPT_LOG2_N  14: the cost of hashing a new password (a stored hash keeps its own cost)

A registration is committed before its 201 is sent: a 201 means the row is in the database, and the
replicator ships it within a sync interval. On SIGTERM or SIGINT it stops accepting requests, lets the
ones in flight finish their commit, closes the database and exits 0.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import signal
import sqlite3
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)
"""
MAX_BODY = 4096
MAX_EMAIL = 254
MAX_PASSWORD = 1024


def hash_password(password: str, log2_n: int) -> str:
    """scrypt with a fresh salt, stored with its parameters: `scrypt$LOG2N$R$P$SALT$HASH` (hex)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=1 << log2_n, r=8, p=1, maxmem=64 << 20, dklen=32)
    return f"scrypt${log2_n}$8$1${salt.hex()}${digest.hex()}"


def password_matches(password: str, stored: str) -> bool:
    _, log2_n, r, p, salt, digest = stored.split("$")
    n, salt_bytes = 1 << int(log2_n), bytes.fromhex(salt)
    again = hashlib.scrypt(password.encode(), salt=salt_bytes, n=n, r=int(r), p=int(p), maxmem=64 << 20, dklen=32)
    return hmac.compare_digest(again.hex(), digest)


class Users:
    """The database: one connection shared under a lock (SQLite has one writer anyway); hashing runs outside it."""

    def __init__(self, path: str, log2_n: int) -> None:
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self.log2_n = log2_n
        self.lock = threading.Lock()
        # Autocommit: each INSERT is its own transaction, committed when execute() returns.
        self.conn: sqlite3.Connection | None = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(SCHEMA)
        # A stored hash to check against when the email is unknown, so both answers take as long.
        self.decoy = hash_password(secrets.token_hex(8), log2_n)

    def register(self, email: str, password: str) -> int | None:
        """The new user's id, committed; None if the email is taken. Raises Closed once we are stopping."""
        stored = hash_password(password, self.log2_n)
        with self.lock:
            try:
                cursor = self._conn().execute("INSERT INTO users (email, password) VALUES (?, ?)", (email, stored))
            except sqlite3.IntegrityError:
                return None
            return cursor.lastrowid

    def login(self, email: str, password: str) -> bool:
        with self.lock:
            row = self._conn().execute("SELECT password FROM users WHERE email = ?", (email,)).fetchone()
        return password_matches(password, row[0] if row else self.decoy) and row is not None

    def healthy(self) -> bool:
        with self.lock:
            return self._conn().execute("SELECT count(*) FROM sqlite_master").fetchone() is not None

    def close(self) -> None:
        """Close the database once the commit in progress, if any, is done; later requests get 503."""
        with self.lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None

    def _conn(self) -> sqlite3.Connection:
        if self.conn is None:
            raise Closed
        return self.conn


class Closed(Exception):
    """The service is stopping: the database is closed."""


def credentials(body: Any) -> tuple[str, str] | None:
    """(email, password) from a request body, or None if it is not a valid pair."""
    if not isinstance(body, dict):
        return None
    email, password = body.get("email"), body.get("password")
    if not isinstance(email, str) or not isinstance(password, str):
        return None
    email = email.strip().lower()
    local, at, domain = email.partition("@")
    if not (local and at and "." in domain and len(email) <= MAX_EMAIL) or not (0 < len(password) <= MAX_PASSWORD):
        return None
    return email, password


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries a Content-Length
    server: SignupServer

    def do_GET(self) -> None:
        if self.path != "/healthz":
            self.reply(404, {"error": "not found"})
        else:
            self.answer(lambda: (200, {"status": "ok"}) if self.server.users.healthy() else (503, {}))

    def do_POST(self) -> None:
        pair = credentials(self.read_json())  # read first: an unread body would be taken for the next request
        if self.path not in ("/register", "/login"):
            self.reply(404, {"error": "not found"})
        elif pair is None:
            self.reply(400, {"error": 'send JSON {"email": "...", "password": "..."}'})
        elif self.path == "/register":
            self.answer(lambda: self.register(*pair))
        else:
            self.answer(lambda: (200, {"email": pair[0]}) if self.server.users.login(*pair) else (401, {}))

    def register(self, email: str, password: str) -> tuple[int, dict[str, Any]]:
        user_id = self.server.users.register(email, password)
        if user_id is None:
            return 409, {"error": "this email is already registered"}
        return 201, {"id": user_id, "email": email}

    def answer(self, handle: Any) -> None:
        try:
            status, body = handle()
        except Closed:
            status, body = 503, {"error": "shutting down"}
            self.close_connection = True
        self.reply(status, body)

    def read_json(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return None
        if not 0 < length <= MAX_BODY:
            self.close_connection = length > MAX_BODY  # unread bytes would be taken for the next request
            return None
        try:
            return json.loads(self.rfile.read(length))
        except ValueError:
            return None

    def reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # no access log; errors are still logged


class SignupServer(ThreadingHTTPServer):
    daemon_threads = True  # an idle keep-alive connection must not hold up the exit

    def __init__(self, address: tuple[str, int], users: Users) -> None:
        super().__init__(address, Handler)
        self.users = users


def main() -> int:
    host, port = os.environ.get("HOST", "0.0.0.0"), int(os.environ.get("PORT", "8080"))
    path = os.environ.get("DATABASE", "/data/app.db")
    users = Users(path, int(os.environ.get("SCRYPT_LOG2_N", "14")))
    server = SignupServer((host, port), users)
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    serving = threading.Thread(target=server.serve_forever, name="http")
    serving.start()
    print(f"signup: listening on {host}:{port}, database {path}", file=sys.stderr, flush=True)
    stopping.wait()
    server.shutdown()  # no new connections; requests already in flight finish (their commits first)
    serving.join()
    server.server_close()
    users.close()
    print("signup: stopped, database closed", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
