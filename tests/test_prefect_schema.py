"""A temporary Prefect server skips its migration check only on a database that Prefect itself has migrated to
the installed version's newest revision; any other database is checked as Prefect always does."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import requests
from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_HOME, get_current_settings, temporary_settings

from cli.prefect_api import TEMPORARY_SERVER_ENV
from cli.prefect_schema import HEAD_RECORD, schema_is_current
from tests.conftest import ROOT


def settings_for(home: Path, url: str | None = None):
    with temporary_settings({PREFECT_HOME: home,
                             PREFECT_API_DATABASE_CONNECTION_URL: url or f"sqlite+aiosqlite:///{home}/prefect.db"}):
        return get_current_settings()


def revision_of(database: Path) -> str:
    with closing(sqlite3.connect(database)) as connection:
        return connection.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def set_revision(database: Path, revision: str) -> None:
    with closing(sqlite3.connect(database)) as connection, connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def serve_once(home: Path, log: Path) -> None:
    """Start a command's temporary server on `home`, create and read a flow through its API, stop it; the modules
    it imported are listed in `log` (`-X importtime`)."""
    with socket.create_server(("127.0.0.1", 0)) as listening:  # as cli.prefect_api hands it over
        server = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "cli.api_server",
                                   str(listening.fileno())], pass_fds=(listening.fileno(),), cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=log.open("w"),
                                  env={**os.environ, **TEMPORARY_SERVER_ENV, "PREFECT_HOME": str(home)})
        api = f"http://127.0.0.1:{listening.getsockname()[1]}/api"
    try:
        deadline = time.monotonic() + 180
        while not answers(f"{api}/health"):
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        made = requests.post(f"{api}/flows/", json={"name": "schema-check"}, timeout=30)
        assert made.status_code in (200, 201), made.text
        assert requests.get(f"{api}/flows/{made.json()['id']}", timeout=30).json()["name"] == "schema-check"
    finally:
        server.terminate()
        server.wait(30)


def checked_migrations(log: Path) -> bool:
    """Prefect imports alembic's commands only to check (and run) its migrations."""
    return "alembic.command" in log.read_text()


@pytest.fixture(scope="module")
def migrated_home(tmp_path_factory) -> Path:
    """A database that a temporary server made, checking and running Prefect's migrations."""
    home = tmp_path_factory.mktemp("prefect-home")
    serve_once(home, home.parent / "first-server.log")
    assert checked_migrations(home.parent / "first-server.log")
    return home


def test_a_database_prefect_migrated_is_current_and_the_newest_revision_is_kept(migrated_home):
    (migrated_home / HEAD_RECORD).unlink(missing_ok=True)
    assert schema_is_current(settings_for(migrated_home))
    kept = json.loads((migrated_home / HEAD_RECORD).read_text())
    assert kept["head"] == revision_of(migrated_home / "prefect.db")
    assert schema_is_current(settings_for(migrated_home)), "and again from the record"


@pytest.mark.parametrize("record", [json.dumps({"installed": "prefect 0.0.1", "head": "not-a-revision"}),
                                    "{not json", "[]", json.dumps({"head": "not-a-revision"})])
def test_a_record_of_another_prefect_or_a_damaged_one_is_not_trusted(migrated_home, record):
    (migrated_home / HEAD_RECORD).write_text(record)
    assert schema_is_current(settings_for(migrated_home))
    assert json.loads((migrated_home / HEAD_RECORD).read_text())["head"] == revision_of(migrated_home / "prefect.db")


def test_any_other_revision_is_checked(migrated_home, tmp_path):
    database = tmp_path / "prefect.db"
    with closing(sqlite3.connect(migrated_home / "prefect.db")) as source, closing(sqlite3.connect(database)) as copy:
        source.backup(copy)  # what its write-ahead log holds too
    set_revision(database, "an-older-one")
    assert not schema_is_current(settings_for(tmp_path))


def test_no_database_or_not_sqlite_is_checked_and_nothing_is_written(tmp_path):
    assert not schema_is_current(settings_for(tmp_path))
    assert not schema_is_current(settings_for(tmp_path, "postgresql+asyncpg://user:secret@127.0.0.1:1/prefect"))
    assert not schema_is_current(settings_for(tmp_path, "not a database url"))
    assert not (tmp_path / "prefect.db").exists() and not (tmp_path / HEAD_RECORD).exists()
    (tmp_path / "prefect.db").write_text("not a database")
    assert not schema_is_current(settings_for(tmp_path))


def test_a_temporary_server_on_a_current_database_skips_the_check_and_serves(migrated_home, tmp_path):
    serve_once(migrated_home, tmp_path / "server.log")
    assert not checked_migrations(tmp_path / "server.log")
