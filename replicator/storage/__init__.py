"""Replica storage: one small protocol, three backends, counting and retrying wrappers, and the URL that picks them."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import ConfigError
from .base import Body, ObjectInfo, ReplicaClient, ReplicaOptions, check_key
from .file import FileClient
from .memory import MemoryClient
from .metered import MeteredClient, RequestCounts, request_counts
from .retry import RetryingClient

__all__ = [
    "Body",
    "FileClient",
    "MemoryClient",
    "MeteredClient",
    "ObjectInfo",
    "ReplicaClient",
    "ReplicaOptions",
    "RequestCounts",
    "RetryingClient",
    "apply_litestream_credentials",
    "check_key",
    "open_client",
    "request_counts",
]

_S3_OPTIONS = {"endpoint", "region"}


def open_client(url: str, *, retry: bool = True, options: ReplicaOptions | None = None) -> ReplicaClient:
    """A client for `s3://bucket/prefix[?endpoint=URL&region=R]`, `file:///dir` or a plain directory path."""
    parts = urlsplit(url)
    client: ReplicaClient
    if parts.scheme == "s3":
        if "@" in parts.netloc:
            raise ConfigError("replica URL must not contain credentials; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
        if not parts.netloc:
            raise ConfigError(f"replica URL {url!r} has no bucket; use s3://BUCKET/PREFIX")
        query = parse_qs(parts.query)
        unknown = set(query) - _S3_OPTIONS
        if unknown:
            raise ConfigError(f"unknown S3 URL option(s) {', '.join(sorted(unknown))}; known: endpoint, region")
        from .s3 import (
            S3Client,
        )  # boto3 is slow to import; only pay for it when S3 is used

        client = S3Client(
            parts.netloc,
            parts.path,
            endpoint_url=query.get("endpoint", [None])[-1],
            region=query.get("region", [None])[-1],
            options=options,
        )
    elif parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"file URL {url!r} must be file:///absolute/path")
        client = FileClient(unquote(parts.path))  # what Path.as_uri() writes: file:///my%20backups
    elif parts.scheme == "" and url:
        client = FileClient(Path(url))
    else:
        raise ConfigError(f"unsupported replica URL {url!r}; use s3://BUCKET/PREFIX or a directory path")
    client = MeteredClient(client)  # under the retries: every attempt is a request (metered.py)
    return RetryingClient(client) if retry else client


def apply_litestream_credentials(environ: MutableMapping[str, str] | None = None) -> None:
    """Litestream's LITESTREAM_ACCESS_KEY_ID / LITESTREAM_SECRET_ACCESS_KEY, where AWS_* are not set."""
    env = os.environ if environ is None else environ
    for ours, theirs in (
        ("AWS_ACCESS_KEY_ID", "LITESTREAM_ACCESS_KEY_ID"),
        ("AWS_SECRET_ACCESS_KEY", "LITESTREAM_SECRET_ACCESS_KEY"),
    ):
        if not env.get(ours) and env.get(theirs):
            env[ours] = env[theirs]
