"""replicate configured the ways our users configure it: environment only, or a litestream.yml as it is."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import Replica, S3Server, fresh_location, point_boto3_at
from harness import Replicator, Writer, restored_rows, rows

NO_AWS_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}


def test_the_environment_alone_configures_replication(app_db: Path, file_replica: Replica, tmp_path: Path) -> None:
    second = tmp_path / "second replica"
    env = {
        "REPLICATOR_DB": str(app_db),
        "REPLICATOR_URL": f"{file_replica.url},{second.as_uri()}",
        "REPLICATOR_SYNC_INTERVAL": "200ms",
    }
    repl = Replicator(app_db, [], (), env).start()
    Writer(app_db, tmp_path / "commits.log").start(count=100, rate=500).wait()
    assert repl.proc is not None
    assert repl.stop() == 0, repl.output
    for root in (file_replica.client.root, second):
        assert restored_rows(type(file_replica.client)(root), tmp_path) == rows(app_db)


LITESTREAM_03_YML = """\
addr: ":9090"
dbs:
  - path: {db}
    replicas:
      - type: s3
        bucket: {bucket}
        path: {prefix}
        endpoint: {endpoint}
        region: us-east-1
        force-path-style: true
        access-key-id: ${{TEST_KEY_ID}}
        secret-access-key: ${{TEST_SECRET}}
        sync-interval: 200ms
"""

LITESTREAM_05_YML = """\
snapshot:
  interval: 24h
  retention: 24h
dbs:
  - path: {db}
    replica:
      type: s3
      bucket: {bucket}
      path: {prefix}
      endpoint: {endpoint}
      access-key-id: {key}
      secret-access-key: {secret}
      sync-interval: 200ms
"""


@pytest.mark.parametrize("template", [LITESTREAM_03_YML, LITESTREAM_05_YML], ids=["v0.3", "v0.5"])
def test_a_litestream_config_replicates_unchanged(
    app_db: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, template: str
) -> None:
    """Credentials from the file (and from $VARs in it): the replicator's own environment has none."""
    point_boto3_at(s3_server, monkeypatch)  # for the test's own look at the bucket
    with fresh_location(s3_server) as location:
        config = tmp_path / "litestream.yml"
        config.write_text(
            template.format(
                db=app_db,
                bucket=location.bucket,
                prefix=location.prefix,
                endpoint=s3_server.endpoint,
                key=s3_server.access_key,
                secret=s3_server.secret_key,
            )
        )
        env = {**NO_AWS_CREDENTIALS, "TEST_KEY_ID": s3_server.access_key, "TEST_SECRET": s3_server.secret_key}
        repl = Replicator(app_db, [], ("-c", str(config)), env).start()
        Writer(app_db, tmp_path / "commits.log").start(count=100, rate=300).wait()
        time.sleep(0.5)
        assert repl.stop() == 0, repl.output
        assert s3_server.secret_key not in repl.output
        assert restored_rows(location.client(), tmp_path) == rows(app_db)
