"""Runs recorded by an lmstack that kept only the executing process's pid (agent schema version 2: no owner host,
no owner start), read by this one after its migration. That lmstack looked the pid up on its own host; read the same
way, a run whose process is gone shows `interrupted` (it showed `running` forever), and one whose process lives is
not resumed by a second process. Real SQLite, real processes."""

import json
import subprocess
import time

import pytest
from agent_helpers import assert_listed_interrupted

from lmstack.agent.launch import open_database
from lmstack.agent.store import MIGRATIONS, claim_run, get_run
from lmstack.db import connect, ensure_schema
from lmstack.errors import LmstackError
from lmstack.web.agent_views import runs_page


def record_as_pid_only_lmstack(db, run_id: str, pid: int) -> None:
    """A `running` run as the pid-only lmstack wrote it, in a database at that lmstack's schema version."""
    conn = connect(db)
    ensure_schema(conn, "agent", MIGRATIONS[:2])
    now = time.time()
    conn.execute("INSERT INTO agent_runs (id, task, status, config, created_at, updated_at, owner_pid) "
                 "VALUES (?, 'old task', 'running', ?, ?, ?, ?)", (run_id, json.dumps({}), now, now, pid))
    conn.commit()
    conn.close()


@pytest.fixture
def live_process():
    process = subprocess.Popen(["sleep", "60"])
    yield process.pid
    process.kill()
    process.wait()


def test_an_old_run_whose_process_is_gone_shows_interrupted(cli, tmp_path):
    ended = subprocess.Popen(["true"])
    ended.wait()
    db = tmp_path / "lmstack.db"
    record_as_pid_only_lmstack(db, "old-run", ended.pid)
    reason = assert_listed_interrupted(cli, db, "old-run", ended.pid)
    conn = open_database(db)
    page = runs_page(conn, None, 0, 50)  # the dashboard's list
    assert [(r["status"], r["stop_reason"]) for r in page["runs"]] == [("interrupted", reason)]
    assert page["status_counts"] == {"interrupted": 1}
    assert claim_run(conn, "old-run") is True and get_run(conn, "old-run").status == "running"


def test_an_old_run_whose_process_lives_is_not_resumed_twice(tmp_path, live_process):
    db = tmp_path / "lmstack.db"
    record_as_pid_only_lmstack(db, "old-live", live_process)
    conn = open_database(db)
    assert get_run(conn, "old-live").status == "running"
    # No `kill PID`: without a recorded start, the pid may since name an unrelated process.
    with pytest.raises(LmstackError, match=f"'old-live' is being executed by process {live_process}; wait for it to "
                                           "finish, or stop it and resume again$"):
        claim_run(conn, "old-live")
