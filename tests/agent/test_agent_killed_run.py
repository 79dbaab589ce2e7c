"""A run whose `lmstack agent run` process was SIGKILLed cannot say so itself: `list` and `trace` show it
`interrupted` (its recorded process is gone) with the command that continues it, without writing to the database,
and `resume` finishes it. Real subprocesses and SQLite."""

import re
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


def test_a_call_redone_on_resume_is_timed_from_the_redo(server, tmp_path):
    """The journal kept the first attempt's start: a model call begun an hour before a crash and redone on resume
    showed in the trace (and its OpenTelemetry span) as an hour long."""
    from lmstack.agent.builtin_tools import calculator
    from lmstack.agent.client import OpenAIClient
    from lmstack.agent.journal import Journal
    from lmstack.agent.launch import open_database
    from lmstack.agent.runtime import AgentRuntime
    from lmstack.agent.settings import AgentConfig
    from lmstack.agent.store import create_run
    from lmstack.agent.tools import ToolRegistry
    from lmstack.agent.tracing import format_tree, load_tree
    from lmstack.config import to_dict

    conn = open_database(tmp_path / "lmstack.db")
    config = AgentConfig(model=server.base_url, model_name="nap")
    create_run(conn, "late", "rest", to_dict(config))
    Journal(conn, "late").start("step0/model0", "model", {"messages": []})  # the crashed process's attempt ...
    conn.execute("UPDATE agent_journal SET started_at = started_at - 3600")  # ... an hour ago
    conn.commit()
    tools = ToolRegistry([calculator])  # the scripted call to `nap` is answered as an unknown tool: no nap taken
    record = AgentRuntime(conn, "late", config, OpenAIClient(server.base_url, "nap"), tools, tmp_path).run()
    assert record.status == "completed"
    started, completed = conn.execute("SELECT started_at, completed_at FROM agent_journal "
                                      "WHERE key = 'step0/model0'").fetchone()
    assert 0 <= completed - started < 60
    model_line = next(line for line in format_tree(load_tree(conn, "late")).splitlines() if "step0/model0" in line)
    assert int(re.search(r"\((\d+) ms", model_line).group(1)) < 60_000, model_line
