"""The one SQLite helper: location, WAL, per-module migrations by version, all-or-nothing transactions."""

import sqlite3
import threading

import pytest

from lmstack.db import DatabaseError, connect, default_db_path, ensure_schema, transaction


def test_default_location_follows_lmstack_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTACK_HOME", str(tmp_path / "home"))
    assert default_db_path() == tmp_path / "home" / "lmstack.db"
    conn = connect()
    assert (tmp_path / "home" / "lmstack.db").exists()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_migrations_apply_once_per_module_and_in_order(tmp_path):
    path = tmp_path / "db.sqlite"
    v1 = ["CREATE TABLE evals (id INTEGER PRIMARY KEY, name TEXT);"]
    v2 = v1 + ["ALTER TABLE evals ADD COLUMN score REAL;\nCREATE INDEX evals_name ON evals(name);"]
    ensure_schema(connect(path), "evals", v1)
    ensure_schema(connect(path), "evals", v1)  # idempotent
    conn = connect(path)
    ensure_schema(conn, "evals", v2)
    ensure_schema(conn, "other", ["CREATE TABLE other_things (x INTEGER);"])
    columns = [r[1] for r in conn.execute("PRAGMA table_info(evals)")]
    assert columns == ["id", "name", "score"]
    versions = dict(conn.execute("SELECT module, version FROM schema_versions").fetchall())
    assert versions == {"evals": 2, "other": 1}
    with pytest.raises(DatabaseError, match="newer"):
        ensure_schema(conn, "evals", v1)


def test_a_failing_migration_leaves_nothing_behind(tmp_path):
    conn = connect(tmp_path / "db.sqlite")
    with pytest.raises(sqlite3.OperationalError):
        ensure_schema(conn, "broken", ["CREATE TABLE good (x INTEGER);\nCREATE TABLE good (y INTEGER);"])
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'good'").fetchone() is None
    assert conn.execute("SELECT * FROM schema_versions WHERE module = 'broken'").fetchone() is None


def test_transactions_roll_back_and_threads_sharing_a_connection_take_turns(tmp_path):
    conn = connect(tmp_path / "db.sqlite")
    conn.execute("CREATE TABLE counter (n INTEGER)")
    conn.execute("INSERT INTO counter VALUES (0)")
    with pytest.raises(RuntimeError):
        with transaction(conn):
            conn.execute("UPDATE counter SET n = 100")
            raise RuntimeError("boom")
    assert conn.execute("SELECT n FROM counter").fetchone()[0] == 0

    def bump():
        for _ in range(50):
            with transaction(conn):
                n = conn.execute("SELECT n FROM counter").fetchone()[0]
                conn.execute("UPDATE counter SET n = ?", (n + 1,))
    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert conn.execute("SELECT n FROM counter").fetchone()[0] == 200
