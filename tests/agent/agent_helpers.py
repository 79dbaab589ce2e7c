"""Shared pieces of the agent tests: an isolated database and agents against the scripted server."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path
from typing import Callable

from lmstack.agent.client import OpenAIClient, RetryPolicy
from lmstack.agent.launch import open_database
from lmstack.agent.memory import MemoryStore
from lmstack.agent.runtime import AgentRuntime
from lmstack.agent.settings import AgentConfig
from lmstack.agent.store import create_run
from lmstack.agent.tools import Tool, ToolRegistry
from lmstack.config import to_dict


def call(name: str, arguments, id: str | None = None) -> dict:
    out = {"name": name, "arguments": arguments}
    if id:
        out["id"] = id
    return out


def run_agent(tmp_path: Path, server, script_name: str, task: str, tools: list[Tool], config: AgentConfig | None = None,
              run_id: str = "run1", stream: bool = False):
    """Create and run an agent in-process against the scripted server; returns (record, conn)."""
    conn = open_database(tmp_path / "lmstack.db")
    config = config or AgentConfig()
    config.model, config.model_name = server.base_url, script_name
    config.workspace = str(tmp_path / "workspace")
    Path(config.workspace).mkdir(exist_ok=True)
    create_run(conn, run_id, task, to_dict(config))
    client = OpenAIClient(server.base_url, script_name, timeout_s=10,
                          retry=RetryPolicy(max_attempts=config.max_attempts, base_delay_s=0.01), stream=stream)
    runtime = AgentRuntime(conn, run_id, config, client, ToolRegistry(tools), Path(config.workspace), MemoryStore(conn))
    return runtime.run(), conn


def journaled(db: Path, key: str) -> bool:
    """Whether the run's journal holds `key`, read without writing (no schema set-up that would wait for the run's
    own writes)."""
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT 1 FROM agent_journal WHERE key = ?", (key,)).fetchone() is not None
    except sqlite3.OperationalError:  # tables not made yet, or locked for a moment
        return False


def assert_listed_interrupted(cli: Callable, db: Path, run_id: str, pid: int) -> str:
    """`agent list` (all, and by status) and `agent trace` show the run `interrupted`, its process `pid` gone, with the
    command that continues it; returns that reason."""
    reason = (f"process {pid} on {socket.gethostname()} ended without finishing the run: killed, or the machine "
              f"went down; `lmstack agent resume {run_id}` continues it from the last completed step")
    listing = cli("agent", "list", "--db", db).stdout.splitlines()
    assert listing[1].startswith(f"{run_id:14} interrupted ") and listing[2].strip() == reason
    assert run_id in cli("agent", "list", "--status", "interrupted", "--db", db).stdout
    assert run_id not in cli("agent", "list", "--status", "running", "--db", db).stdout
    assert cli("agent", "trace", run_id, "--db", db).stdout.splitlines()[0] == f"run {run_id}: interrupted -- {reason}"
    return reason
