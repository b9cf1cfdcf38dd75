"""Configuration: durations, settings and YAML files are validated up front, every mistake a ConfigError."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from replicator import config
from replicator.config import (
    Settings,
    load_config,
    make_settings,
    parse_duration,
    parse_size,
    read_config,
    resolve,
)
from replicator.errors import ConfigError
from replicator.storage import apply_litestream_credentials


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "replicator.yml"
    path.write_text(textwrap.dedent(text))
    return path


# -- parse_duration -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("100ms", 0.1),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("2d", 172800.0),
        ("1h30m", 5400.0),
        ("1m30s500ms", 90.5),
        (" 10S ", 10.0),
        ("0s", 0.0),
    ],
)
def test_duration_text_is_converted_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("number", "seconds"), [(5, 5.0), (0.25, 0.25), (0, 0.0)])
def test_bare_number_is_taken_as_seconds(number: float, seconds: float) -> None:
    result = parse_duration(number)
    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "s", "10", "1x", "ten seconds", "-1s", "1h 30m", "1.s", ".5s", "1e3s", "5m garbage", "h1"],
)
def test_malformed_duration_is_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid duration"):
        parse_duration(text)


# -- parse_size -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("500kB", 500_000),
        ("1GB", 10**9),
        ("512 MB", 512 * 10**6),
        ("2GiB", 2 << 30),
        ("1.5MiB", 3 << 19),
        ("4096", 4096),
        (4096, 4096),
    ],
)
def test_size_text_is_converted_to_bytes(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "1 XB", "-1MB", "ten", 1.5, True])
def test_malformed_size_is_rejected(text: object) -> None:
    with pytest.raises(ConfigError, match="invalid size"):
        parse_size(text)


def test_the_spool_limit_is_a_size_from_flags_files_or_the_environment() -> None:
    assert make_settings({"spool-limit": "500MB"}).spool_limit == 500 * 10**6


# -- make_settings --------------------------------------------------------------------------------------


def test_no_values_give_the_defaults() -> None:
    assert make_settings({}) == Settings()


def test_option_names_may_use_dashes_or_underscores() -> None:
    dashed = make_settings({"sync-interval": "2s", "min-checkpoint-pages": 50})
    underscored = make_settings({"sync_interval": "2s", "min_checkpoint_pages": 50})
    assert dashed == underscored
    assert (dashed.sync_interval, dashed.min_checkpoint_pages) == (2.0, 50)


def test_durations_are_parsed_and_counts_are_integers() -> None:
    settings = make_settings(
        {
            "sync-interval": "100ms",
            "snapshot-interval": "12h",
            "retention": "7d",
            "shutdown-timeout": 10,
            "min-checkpoint-pages": "500",
            "compression-level": 3,
        }
    )
    assert settings.sync_interval == pytest.approx(0.1)
    assert settings.snapshot_interval == 12 * 3600
    assert settings.retention == 7 * 86400
    assert settings.shutdown_timeout == 10.0
    assert settings.min_checkpoint_pages == 500
    assert settings.compression_level == 3


def test_none_values_leave_the_base_setting_unchanged() -> None:
    base = make_settings({"retention": "1h"})
    assert make_settings({"retention": None, "sync-interval": None}, base) == base


def test_values_override_only_their_own_base_settings() -> None:
    base = make_settings({"retention": "1h", "sync-interval": "5s"})
    settings = make_settings({"sync-interval": "1s"}, base)
    assert settings.retention == 3600.0
    assert settings.sync_interval == 1.0


def test_unknown_setting_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'sync-intreval'"):
        make_settings({"sync-intreval": "1s"})


@pytest.mark.parametrize("name", ["sync-interval", "snapshot-interval", "retention"])
def test_interval_that_is_not_positive_is_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match="must be positive"):
        make_settings({name: 0})


def test_min_checkpoint_pages_below_one_is_rejected() -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        make_settings({"min-checkpoint-pages": 0})


def test_malformed_duration_setting_is_rejected() -> None:
    with pytest.raises(ConfigError, match="invalid duration"):
        make_settings({"retention": "forever"})


def test_fractional_poll_interval_is_kept() -> None:
    assert make_settings({"poll-interval": 0.5}).poll_interval == 0.5


def test_non_numeric_count_setting_is_rejected_as_config_error() -> None:
    with pytest.raises(ConfigError):
        make_settings({"min-checkpoint-pages": "lots"})


def test_duration_setting_of_the_wrong_type_is_rejected_as_config_error() -> None:
    with pytest.raises(ConfigError):
        make_settings({"retention": ["1h"]})


# -- load_config ----------------------------------------------------------------------------------------


def test_config_file_lists_every_database_with_shared_and_own_settings(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """\
        sync-interval: 5s
        retention: 48h
        dbs:
          - path: /data/app.db
            replicas: [s3://bucket/app, /backups/app]
            sync-interval: 100ms
          - path: /data/other.db
            replicas:
              - url: s3://bucket/other
            min-checkpoint-pages: 10
        """,
    )
    app, other = load_config(path)
    assert app.path == Path("/data/app.db")
    assert app.replicas == ["s3://bucket/app", "/backups/app"]
    assert app.settings.sync_interval == pytest.approx(0.1)
    assert app.settings.retention == 48 * 3600
    assert app.settings.min_checkpoint_pages == Settings().min_checkpoint_pages
    assert other.path == Path("/data/other.db")
    assert other.replicas == ["s3://bucket/other"]
    assert other.settings.sync_interval == 5.0
    assert other.settings.retention == 48 * 3600
    assert other.settings.min_checkpoint_pages == 10


def test_config_file_without_settings_uses_the_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dbs: [{path: app.db, replicas: [/backups/app]}]\n")
    [db] = load_config(path)
    assert db.settings == Settings()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "retention: 1h\n",
        "dbs: []\n",
        "dbs: {path: app.db}\n",
        "- path: app.db\n",
    ],
    ids=["empty", "no-dbs", "empty-dbs", "dbs-not-a-list", "top-level-list"],
)
def test_config_without_a_list_of_databases_is_rejected(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="non-empty 'dbs' list"):
        load_config(write_config(tmp_path, text))


@pytest.mark.parametrize(
    "text",
    ["dbs: [{replicas: [/backups/app]}]\n", "dbs: [app.db]\n"],
    ids=["no-path", "entry-not-a-mapping"],
)
def test_database_without_a_path_is_rejected(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"dbs\[0\] needs a 'path'"):
        load_config(write_config(tmp_path, text))


@pytest.mark.parametrize(
    "text",
    [
        "dbs: [{path: app.db}]\n",
        "dbs: [{path: app.db, replicas: []}]\n",
        "dbs: [{path: app.db, replicas: [42]}]\n",
    ],
    ids=["missing", "empty", "not-a-url"],
)
def test_database_without_replica_urls_is_rejected(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"dbs\[0\] needs a list of replica URLs"):
        load_config(write_config(tmp_path, text))


def test_error_names_the_offending_database_entry(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dbs: [{path: a.db, replicas: [/b/a]}, {path: b.db}]\n")
    with pytest.raises(ConfigError, match=r"dbs\[1\]"):
        load_config(path)


def test_invalid_yaml_is_rejected(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dbs: [{path: app.db\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_missing_config_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yml")


def test_unknown_top_level_setting_is_rejected(tmp_path: Path) -> None:
    path = write_config(tmp_path, "retension: 1h\ndbs: [{path: app.db, replicas: [/b/app]}]\n")
    with pytest.raises(ConfigError, match="unknown setting 'retension'"):
        load_config(path)


def test_unknown_per_database_setting_is_rejected(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dbs: [{path: app.db, replicas: [/b/app], sync: 1s}]\n")
    with pytest.raises(ConfigError, match="unknown setting 'sync'"):
        load_config(path)


def test_invalid_per_database_setting_is_rejected(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dbs: [{path: app.db, replicas: [/b/app], retention: 0s}]\n")
    with pytest.raises(ConfigError, match="must be positive"):
        load_config(path)


# -- Litestream's litestream.yml, as it is -----------------------------------------------------------------

LITESTREAM_03 = """\
addr: ":9090"
access-key-id: AKIAEXAMPLE
secret-access-key: s3cr3t
exec: my-app --port 8080
dbs:
  - path: /data/app.db
    monitor-interval: 1s
    replicas:
      - type: s3
        bucket: my-bucket
        path: app
        endpoint: http://127.0.0.1:9000
        region: eu-west-1
        force-path-style: true
        sync-interval: 10s
        retention: 72h
      - path: /backups/app
"""

LITESTREAM_05 = """\
snapshot:
  interval: 1h
  retention: 48h
shutdown-sync-timeout: 10s
levels:
  - interval: 5m
dbs:
  - path: /data/app.db
    replica:
      url: s3://my-bucket/app
"""


def test_a_litestream_03_config_is_read_as_it_is(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = read_config(write_config(tmp_path, LITESTREAM_03))
    [db] = config.databases
    assert db.replicas == ["s3://my-bucket/app?endpoint=http://127.0.0.1:9000&region=eu-west-1", "/backups/app"]
    options = db.options[db.replicas[0]]
    assert (options.access_key_id, options.secret_access_key) == ("AKIAEXAMPLE", "s3cr3t")
    assert db.settings.sync_interval == 10 and db.settings.retention == 72 * 3600
    assert config.exec_command == "my-app --port 8080" and config.metrics_addr == ":9090"
    assert "addr" not in caplog.text and "dbs[0].monitor-interval (line 7)" in caplog.text
    assert "s3cr3t" not in caplog.text and "s3cr3t" not in repr(options)


def test_a_litestream_05_config_with_a_single_replica_is_read(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    [db] = load_config(write_config(tmp_path, LITESTREAM_05))
    assert db.replicas == ["s3://my-bucket/app"]
    assert db.settings.snapshot_interval == 3600 and db.settings.retention == 48 * 3600
    assert db.settings.shutdown_timeout == 10
    assert "levels (line 5)" in caplog.text


def test_variables_are_expanded_and_unset_ones_are_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUCKET", "from-env")
    monkeypatch.delenv("UNSET_PREFIX", raising=False)
    path = write_config(tmp_path, "dbs:\n  - path: /a.db\n    replicas:\n      - s3://${BUCKET}/x$UNSET_PREFIX\n")
    assert load_config(path)[0].replicas == ["s3://from-env/x"]
    assert load_config(path, expand_env=False)[0].replicas == ["s3://${BUCKET}/x$UNSET_PREFIX"]


def test_an_unknown_key_names_its_file_and_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/a\n        bukcet: x\n")
    with pytest.raises(
        ConfigError, match=rf"config {path} line 5: unknown setting 'bukcet' in dbs\[0\]\.replicas\[0\]"
    ):
        load_config(path)


def test_encryption_keys_are_refused_rather_than_ignored(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dbs:\n  - path: /a.db\n    replicas:\n      - url: s3://b/a\n        age: {}\n")
    with pytest.raises(ConfigError, match=r"line 5: dbs\[0\]\.replicas\[0\]\.age is not supported"):
        load_config(path)


def test_replicas_with_different_intervals_get_the_safe_side(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = "dbs:\n  - path: /a.db\n    replicas:\n      - {url: s3://b/a, sync-interval: 5s, retention: 1h}\n"
    text += "      - {path: /backups/a, sync-interval: 1s, retention: 2h}\n"
    [db] = load_config(write_config(tmp_path, text))
    assert db.settings.sync_interval == 1 and db.settings.retention == 7200
    assert "sync-interval differs between replicas" in caplog.text


def test_a_replica_type_we_do_not_have_is_an_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, "dbs: [{path: /a.db, replicas: [{type: gcs, bucket: b, path: a}]}]\n")
    with pytest.raises(ConfigError, match="type 'gcs' is not supported"):
        load_config(path)


# -- where `replicate` finds its databases: flag > environment > file -------------------------------------


def test_the_environment_alone_is_enough() -> None:
    env = {
        "REPLICATOR_DB": "/data/app.db",
        "REPLICATOR_URL": "s3://b/app, /backups/app",
        "REPLICATOR_SYNC_INTERVAL": "5s",
    }
    [db] = resolve(None, (), None, {}, environ=env).databases
    assert db.path == Path("/data/app.db") and db.replicas == ["s3://b/app", "/backups/app"]
    assert db.settings.sync_interval == 5


def test_a_flag_beats_the_environment_which_beats_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "sync-interval: 9s\nretention: 9h\ndbs: [{path: /a.db, replicas: [/b/a]}]\n")
    env = {"REPLICATOR_CONFIG": str(path), "REPLICATOR_SYNC_INTERVAL": "5s", "REPLICATOR_RETENTION": "5h"}
    [db] = resolve(None, (), None, {"sync_interval": "1s"}, environ=env).databases
    assert (db.settings.sync_interval, db.settings.retention) == (1, 5 * 3600)


def test_the_app_to_run_comes_from_the_environment_before_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "exec: from-file\ndbs: [{path: /a.db, replicas: [/b/a]}]\n")
    assert resolve(None, (), path, {}, environ={}).exec_command == "from-file"
    assert resolve(None, (), path, {}, environ={"REPLICATOR_EXEC": "from-env"}).exec_command == "from-env"


def test_nothing_to_replicate_names_the_three_ways(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG", tmp_path / "absent.yml")
    with pytest.raises(ConfigError, match=r"REPLICATOR_DB and REPLICATOR_URL.*-c FILE, REPLICATOR_CONFIG"):
        resolve(None, (), None, {}, environ={})


def test_a_database_without_a_url_in_the_environment_is_an_error() -> None:
    with pytest.raises(ConfigError, match="REPLICATOR_URL is not set"):
        resolve(None, (), None, {}, environ={"REPLICATOR_DB": "/data/app.db"})


def test_litestream_credentials_are_used_where_aws_ones_are_missing() -> None:
    env = {"LITESTREAM_ACCESS_KEY_ID": "id", "LITESTREAM_SECRET_ACCESS_KEY": "key", "AWS_ACCESS_KEY_ID": "mine"}
    apply_litestream_credentials(env)
    assert env["AWS_ACCESS_KEY_ID"] == "mine" and env["AWS_SECRET_ACCESS_KEY"] == "key"
