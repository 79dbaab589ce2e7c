"""Commands never write to a database file lmstack did not make: `eval list --db other.db` (and `eval run`, `agent
run`) added lmstack's tables (and WAL mode) to another app's SQLite file, and `eval compare` or `report` on a
mistyped --db created an empty database."""

from __future__ import annotations

import contextlib
import sqlite3

import pytest

from cli_testing import one_line_error

READERS = [("eval", ["eval", "list"]), ("eval", ["eval", "compare", "a", "b"]), ("eval", ["eval", "report", "a"]),
           ("agent", ["agent", "list"]), ("agent", ["agent", "trace", "r1"]), ("ui", ["ui", "--port", "0"])]


@pytest.mark.parametrize("command, args", READERS, ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_another_apps_database_is_refused_and_left_as_it_was(cli, tmp_path, command, args):
    db = other_apps_database(tmp_path)
    before = db.read_bytes()
    refused = cli(*args, "--db", db, timeout=60)
    assert f"error: database '{db}' is not lmstack's (it has no schema_versions table; left unchanged); " in \
        one_line_error(refused, command)
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def other_apps_database(tmp_path):
    db = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(db)) as other:
        other.execute("CREATE TABLE notes (body TEXT)")
        other.commit()
    return db


WRITERS = [("eval", ["eval", "run", "arithmetic_agent", "--model", "http://127.0.0.1:9/v1"]),
           ("agent", ["agent", "run", "add 2 and 3", "--model", "http://127.0.0.1:9/v1"])]


@pytest.mark.parametrize("command, args", WRITERS, ids=["eval run", "agent run"])
def test_a_writing_command_refuses_another_apps_database_too(cli, tmp_path, command, args):
    db = other_apps_database(tmp_path)
    before = db.read_bytes()
    refused = cli(*args, "--db", db)
    assert one_line_error(refused, command).endswith(f"error: database '{db}' is not lmstack's (it holds 'notes' but "
                                                     "no schema_versions table; left unchanged); pass another --db")
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


@pytest.mark.parametrize("command, args", READERS[1:3], ids=["compare", "report"])
def test_a_mistyped_db_is_refused_and_none_is_created(cli, tmp_path, command, args):
    db = tmp_path / "typo" / "lmstack.db"
    refused = cli(*args, "--db", db)
    assert one_line_error(refused, command) == (f"lmstack eval: error: database '{db}' does not exist; `lmstack eval "
                                                "run` creates it: pass the --db its runs were recorded in")
    assert list(tmp_path.iterdir()) == []


def test_eval_list_on_a_fresh_machine_lists_the_tasks_and_creates_no_database(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("LMSTACK_HOME", str(tmp_path / "home"))
    listed = cli("eval", "list")
    assert listed.returncode == 0 and "val_bpb" in listed.stdout and "runs: none yet" in listed.stdout
    assert list(tmp_path.iterdir()) == []
