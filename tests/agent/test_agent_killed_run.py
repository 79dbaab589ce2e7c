"""A run whose `lmstack agent run` process was SIGKILLed cannot say so itself: `list` and `trace` show it
`interrupted` (its recorded process is gone) with the command that continues it, without writing to the database,
and `resume` finishes it. Real subprocesses and SQLite."""

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_helpers import assert_listed_interrupted, call, journaled
from cli_testing import run_cli
from lmstack.agent.testing.scripted_server import ScriptedServer

TOOLS = f"{Path(__file__).with_name('failure_tools.py')}:nap"
# The nap is the window in which the test kills the run; the resume naps again (the call never completed).
SCRIPT = {"scripts": {"nap": [{"tool_calls": [call("nap", {"seconds": 4})]}, {"content": "rested"}]}}


@pytest.fixture(scope="module")
def server():
    with ScriptedServer(SCRIPT) as s:
        yield s


def stored_run(db: Path) -> tuple:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT * FROM agent_runs").fetchone()


def test_a_sigkilled_run_shows_interrupted_until_resumed(server, tmp_path):
    db = tmp_path / "lmstack.db"
    run = subprocess.Popen([sys.executable, "-m", "lmstack.cli", "agent", "run", "rest", "--model", server.base_url,
                            "--model-name", "nap", "--tools", TOOLS, "--run-id", "killed", "--db", str(db)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not journaled(db, "step0/tool0"):
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before the test could kill it"
    run.kill()
    run.wait()
    stored = stored_run(db)
    assert_listed_interrupted(run_cli, db, "killed", run.pid)
    assert stored_run(db) == stored  # still `running` in the database: reading wrote nothing

    resumed = run_cli("agent", "resume", "killed", "--db", db)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines()[0].startswith("run killed: completed (2 steps") and "rested" in resumed.stdout
