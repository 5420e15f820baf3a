"""Whether the database a temporary Prefect server opens is at the installed Prefect's schema already.

Prefect's server checks its migrations each time it starts: alembic loads every one of its revision files
(0.12 s of a warm re-run, on the server's start-up, which the command waits for). A database whose revision is
the newest of the installed Prefect's migrations has nothing to migrate, and its server can skip the check
(`server.database.migrate_on_start`). The newest revision is found with alembic once per installed Prefect and
kept in PREFECT_HOME, as Prefect keeps its own record that the blocks are registered (`memo_store.toml`).
Anything else (a database that is not SQLite, none yet, an older or a newer revision) leaves the check on.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import prefect
import sqlalchemy as sa
from prefect.server.database.orm_models import AioSqliteORMConfiguration
from prefect.settings import Settings

HEAD_RECORD = "phi3-pipeline-schema-head.json"


def schema_is_current(settings: Settings) -> bool:
    database = _sqlite_file(settings)
    revision = None if database is None else _revision(database)
    return revision is not None and revision == _newest_revision(settings.home)


def _sqlite_file(settings: Settings) -> Path | None:
    try:
        url = sa.engine.make_url(settings.server.database.connection_url.get_secret_value())
    except sa.exc.ArgumentError:  # Prefect's own start-up reports it, as before
        return None
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _revision(database: Path) -> str | None:
    """The database's alembic revision, read without creating the file or writing to it."""
    try:
        with closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            rows = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:  # no such file, no such table
        return None
    return rows[0][0] if len(rows) == 1 else None


def _newest_revision(home: Path) -> str | None:
    versions = AioSqliteORMConfiguration().versions_dir
    installed = f"prefect {prefect.__version__}, migrations {versions.stat().st_mtime_ns}"
    record = home / HEAD_RECORD
    try:
        kept = json.loads(record.read_text())
        if kept["installed"] == installed:
            return kept["head"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    head = _alembic_head(versions)
    if head is not None:
        partial = record.with_name(f".{record.name}.partial")
        try:
            partial.write_text(json.dumps({"installed": installed, "head": head}))
            partial.replace(record)
        except OSError:  # a read-only home: found again next time
            pass
    return head


def _alembic_head(versions: Path) -> str | None:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError
    from prefect.server.database.alembic_commands import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    script.version_locations = [str(versions)]  # as Prefect's migrations environment sets it for SQLite
    try:
        return script.get_current_head()
    except CommandError:  # more than one head
        return None
