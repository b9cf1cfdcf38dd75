"""docs/API.md's examples, run as written (only the paths swapped): each in its own process, as the app."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from harness import wipe_local

import replicator

API_MD = Path(__file__).parent.parent / "docs" / "API.md"


def examples(heading: str) -> list[str]:
    """The python blocks of the docs/API.md section whose heading starts with `heading`."""
    section = API_MD.read_text().split(f"\n{heading}", 1)[1]
    section = section.split("\n## ", 1)[0].split("\n### ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


def swap(code: str, db: Path, replica: Path) -> str:
    assert '"/data/app.db"' in code and '"s3://bucket/app"' in code
    return code.replace('"/data/app.db"', repr(str(db))).replace('"s3://bucket/app"', repr(str(replica)))


def run(code: str, cwd: Path, **env: str) -> str:
    environment = {**os.environ, **env}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120, env=environment, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def emails(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return [e for (e,) in conn.execute("SELECT email FROM users ORDER BY email")]
    finally:
        conn.close()


# Run inside the app's process right after a sign-up was answered, before anything stops: the barrier's promise.
ON_THE_REPLICA = """
import sqlite3, replicator, tempfile, os
check = os.path.join(tempfile.mkdtemp(), "check.db")
replicator.restore(check, {replica!r})
print(sorted(e for (e,) in sqlite3.connect(check).execute("SELECT email FROM users")))
"""


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "data").mkdir()
    return tmp_path / "data" / "app.db", tmp_path / "replica"


def test_the_plain_example_replicates_and_waits(paths: tuple[Path, Path], tmp_path: Path) -> None:
    db, replica = paths
    code = examples("## `replicator.Replicator`")[0].replace('"/data/app.db"', repr(str(db)))
    code = code.replace('"/backups/app"', repr(str(replica)))
    assert run(code, tmp_path).startswith("durable at generation ")
    out = tmp_path / "restored.db"
    replicator.restore(out, str(replica))
    assert emails(out) == ["ada@example.com"]


def test_the_status_example_reads_a_stopped_replicator_offline(paths: tuple[Path, Path], tmp_path: Path) -> None:
    db, replica = paths
    plain = examples("## `replicator.Replicator`")[0].replace('"/data/app.db"', repr(str(db)))
    run(plain.replace('"/backups/app"', repr(str(replica))), tmp_path)
    code = examples("## `replicator.status`")[0].replace('"/data/app.db"', repr(str(db)))
    url, txid, lag, window = run(code.replace('"/backups/app"', repr(str(replica))), tmp_path).split()
    latest = replicator.status(db, str(replica)).replicas[0]
    assert (url, int(txid), float(lag)) == (f"file://{replica}", latest.txid, 0.0) and float(window) >= 0


def test_the_fastapi_example_answers_a_signup_once_it_is_on_the_replica(
    paths: tuple[Path, Path], tmp_path: Path
) -> None:
    db, replica = paths
    (tmp_path / "app_fastapi.py").write_text(swap(examples("### FastAPI")[0], db, replica))
    driver = f"""
from fastapi.testclient import TestClient
from app_fastapi import app
with TestClient(app) as client:
    assert client.post("/signup", params={{"email": EMAIL}}).status_code == 200
{_indented(ON_THE_REPLICA.format(replica=str(replica)))}
"""
    assert run(driver.replace("EMAIL", "'ada@example.com'"), tmp_path).strip() == "['ada@example.com']"
    wipe_local(db)  # a redeploy: the next start restores first
    second = run(driver.replace("EMAIL", "'bob@example.com'"), tmp_path).strip()
    assert second == "['ada@example.com', 'bob@example.com']"


def test_the_flask_example_answers_a_signup_once_it_is_on_the_replica(paths: tuple[Path, Path], tmp_path: Path) -> None:
    db, replica = paths
    (tmp_path / "app_flask.py").write_text(swap(examples("### Flask")[0], db, replica))
    driver = f"""
from app_flask import create_app
client = create_app().test_client()
assert client.post("/signup", data={{"email": "ada@example.com"}}).status_code == 200
{ON_THE_REPLICA.format(replica=str(replica))}
"""
    assert run(driver, tmp_path).strip() == "['ada@example.com']"


DJANGO_SETTINGS = """
SECRET_KEY = "test"
INSTALLED_APPS = ["signups"]
DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {db!r}}}}}
REPLICA_URL = {replica!r}
USE_TZ = True
"""

DJANGO_SIGNUP = """
import django, replicator
django.setup()
from django.conf import settings
from django.db import connection
with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE IF NOT EXISTS users(email TEXT PRIMARY KEY)")
    cursor.execute("INSERT INTO users VALUES ('ada@example.com')")
replicator.wait(settings.DATABASES["default"]["NAME"], timeout=10)
"""

DJANGO_COMMAND = """
import django
django.setup()
from django.core.management import call_command
call_command("restore_db")
"""


def test_the_django_examples_restore_at_the_entrypoint_and_replicate_from_ready(
    paths: tuple[Path, Path], tmp_path: Path
) -> None:
    db, replica = paths
    project = tmp_path / "site"
    for block in examples("### Django"):
        where = project / block.split("\n", 1)[0].removeprefix("# ")
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(block)
    for package in ("signups", "signups/management", "signups/management/commands"):
        (project / package / "__init__.py").touch()
    (project / "mysite_settings.py").write_text(DJANGO_SETTINGS.format(db=str(db), replica=str(replica)))
    env = {"DJANGO_SETTINGS_MODULE": "mysite_settings"}

    assert "holds nothing" in run(DJANGO_COMMAND, project, **env)  # a first deploy: nothing to restore yet
    signup = DJANGO_SIGNUP + ON_THE_REPLICA.format(replica=str(replica))
    assert run(signup, project, REPLICATE="1", **env).strip() == "['ada@example.com']"
    wipe_local(db)
    assert run(DJANGO_COMMAND, project, **env).startswith("restored up to txid")
    assert emails(db) == ["ada@example.com"]


def _indented(code: str) -> str:
    return "\n".join(f"    {line}" for line in code.splitlines())
