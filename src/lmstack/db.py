"""The one SQLite database: `$LMSTACK_HOME/lmstack.db` (LMSTACK_HOME defaults to ~/.lmstack).

WAL mode so readers (the CLI, the dashboard) never block the writer; `synchronous=FULL` so a
committed transaction survives the process being killed at any instant. Every write goes through
`transaction(conn)`. Each layer owns its tables: it calls `ensure_schema(conn, "agent", MIGRATIONS)`
with its own ordered list of SQL scripts, and the version reached per layer is kept in
`schema_versions`, so layers migrate independently and a script never runs twice.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterator, Sequence

from lmstack.errors import LmstackError, quoted_few


class DatabaseError(LmstackError):
    """The database file cannot be opened or is from a newer lmstack."""


def lmstack_home() -> Path:
    return Path(os.environ.get("LMSTACK_HOME") or Path.home() / ".lmstack")


def default_db_path() -> Path:
    return lmstack_home() / "lmstack.db"


def existing_database(path: str | Path | None, fix: str) -> Path:
    """The database a reading command (a list, a trace, the dashboard) opens, checked without writing to it: one that
    does not exist is refused, as opening it would create an empty one (and its folders) and a mistyped --db list no
    runs; so is a file lmstack did not make (another app's SQLite file, to which opening it added lmstack's tables and
    WAL mode), told by its `schema_versions` table. `fix`: what the refusal tells the user to pass."""
    path = Path(path) if path is not None else default_db_path()
    if not path.exists():
        raise DatabaseError(f"database '{path}' does not exist; {fix}")
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as conn:
            ours = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_versions'"
                                ).fetchone()
    except sqlite3.Error as err:
        raise DatabaseError(f"cannot open database '{path}': {err}; {fix}") from None
    if not ours:
        raise DatabaseError(f"database '{path}' is not lmstack's (it has no schema_versions table; left unchanged); "
                            f"{fix}")
    return path


class LockedConnection(sqlite3.Connection):
    """A connection that carries the lock its threads take turns on (see `transaction`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lock = threading.RLock()


def connect(path: str | Path | None = None) -> sqlite3.Connection:
    """Open (creating if needed) the database; autocommit mode, transactions are explicit."""
    path = Path(path) if path is not None else default_db_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0, check_same_thread=False,
                               factory=LockedConnection)
        conn.row_factory = sqlite3.Row
        _refuse_foreign(conn, path)  # before WAL mode, which would change another app's file
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
    except (sqlite3.Error, OSError) as err:
        raise DatabaseError(f"cannot open database '{path}': {err}; set LMSTACK_HOME to a writable "
                            f"directory or pass --db PATH") from None
    conn.execute("CREATE TABLE IF NOT EXISTS schema_versions (module TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    return conn


def _refuse_foreign(conn: sqlite3.Connection, path: Path) -> None:
    """A writing command (`eval run`, `agent run --db other.db`) added lmstack's tables and WAL mode to another app's
    SQLite file: a database with tables but no `schema_versions` is not lmstack's, and is left unchanged."""
    tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    if tables and "schema_versions" not in tables:
        conn.close()
        raise DatabaseError(f"database '{path}' is not lmstack's (it holds {quoted_few(tables)} but no "
                            "schema_versions table; left unchanged); pass another --db")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception; takes the write lock up front.

    Threads sharing a connection (parallel tool calls) take turns: SQLite has one transaction per
    connection, so two threads must never interleave statements of two transactions. A nested call
    from the same thread joins the open transaction.
    """
    with conn.lock:
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def ensure_schema(conn: sqlite3.Connection, module: str, migrations: Sequence[str]) -> None:
    """Apply `migrations[v:]` for `module`, each script and its version bump in one transaction."""
    with transaction(conn):
        row = conn.execute("SELECT version FROM schema_versions WHERE module = ?", (module,)).fetchone()
        version = row["version"] if row else 0
        if version > len(migrations):
            raise DatabaseError(f"the '{module}' tables are at schema version {version}, newer than this "
                                f"lmstack knows ({len(migrations)}); upgrade lmstack")
        for number, script in enumerate(migrations[version:], start=version + 1):
            # executescript would COMMIT our transaction; run statement by statement instead.
            for statement in _split_statements(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_versions (module, version) VALUES (?, ?) "
                         "ON CONFLICT(module) DO UPDATE SET version = excluded.version", (module, number))


def _split_statements(script: str) -> list[str]:
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    assert not current.strip(), f"incomplete SQL statement in migration: {current!r}"
    return statements
