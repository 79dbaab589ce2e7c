"""The dashboard's approval route in-process, against a real run waiting for approval and the scripted model,
with every statement its agent-table connections run recorded; and two approvals of one run in quick succession,
its resume threads held at chosen points."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lmstack.agent.launch import open_database, start_run
from lmstack.agent.runtime import AgentRuntime
from lmstack.agent.settings import AgentConfig
from lmstack.agent.store import get_run
from lmstack.agent.testing.scripted_server import ScriptedServer
from lmstack.serve.errors import install_error_handlers
from lmstack.web import routes_data
from lmstack.web.routes_data import data_router
from lmstack.web.settings import DashboardSettings
from lmstack.web.sources import DataSources
from web_seed import agent_config


class RecordedSources(DataSources):
    """The dashboard's own data sources, whose agent-table connections also record each statement they run."""

    def __init__(self, settings: DashboardSettings):
        super().__init__(settings)
        self.statements: list[str] = []

    def agent_conn(self):
        conn = super().agent_conn()
        conn.set_trace_callback(self.statements.append)
        return conn


def test_approving_reads_the_pending_calls_once_then_resumes_the_run(scripted, tmp_path, monkeypatch):
    resumed: list[AgentRuntime] = []  # the runtime the dashboard rebuilt, to check what it holds once the run ends
    resume = routes_data._resume
    monkeypatch.setattr(routes_data, "_resume", lambda runtime: (resumed.append(runtime), resume(runtime)))
    conn = open_database(tmp_path / "lmstack.db")
    config = agent_config(scripted.base_url, "agent-approval", tmp_path / "workspace")
    assert start_run(conn, "Ship it.", config, "waiting-run").status == "waiting"
    sources = RecordedSources(DashboardSettings(runs_root=tmp_path, db_path=tmp_path / "lmstack.db"))
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(data_router(sources))
    with TestClient(app) as client:
        response = client.post("/api/agents/runs/waiting-run/approvals", json={"approve": True})
    assert response.status_code == 200, response.text
    assert response.json() == {"decided": ["step0/tool0"], "approve": True, "resumed": True}
    # Once, before the reachability check; the decision then updates the calls it found.
    reads = [s for s in sources.statements if s.startswith("SELECT call_key FROM agent_approvals")]
    assert len(reads) == 1, sources.statements
    deadline = time.monotonic() + 60  # the resume runs in the dashboard's background thread
    while get_run(conn, "waiting-run").status != "completed" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert get_run(conn, "waiting-run").status == "completed"
    conn.close()
    [runtime] = resumed
    deadline = time.monotonic() + 10  # the thread closes them after recording the run's end
    while not runtime.client.sdk.is_closed() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runtime.client.sdk.is_closed(), "the resumed run's model client should not hold its sockets open"


APPROVAL_TOOLS = Path(__file__).parents[1] / "agent" / "approval_tools.py"
TWO_CALLS = {"scripts": {"two-calls": [
    {"content": None, "tool_calls": [{"name": "append_line", "arguments": {"text": "first"}},
                                     {"name": "append_line", "arguments": {"text": "second"}}]},
    {"content": "Both lines are in the ledger."}]}}


@pytest.fixture(scope="module")
def two_calls_server():
    with ScriptedServer(TWO_CALLS) as server:
        yield server


def waiting_on_two_calls(server, tmp_path: Path, run_id: str, tools: Path = APPROVAL_TOOLS) -> TestClient:
    """A run waiting for approval of two calls of one step, each appending a line to the workspace's ledger.txt (the
    tool of the file `tools`); a client of the dashboard's API over it."""
    config = AgentConfig(model=server.base_url, model_name="two-calls", workspace=str(tmp_path / "workspace"),
                         tools=[f"{tools}:append_line"])
    config.max_attempts = 1
    conn = open_database(tmp_path / "lmstack.db")
    assert start_run(conn, "Append two lines.", config, run_id).status == "waiting"
    conn.close()
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(data_router(DataSources(DashboardSettings(runs_root=tmp_path, db_path=tmp_path / "lmstack.db"))))
    return TestClient(app)


class Hold:
    """Holds the calls of AgentRuntime.`method` for which `when(*args)` holds until `go` is set; `arrived` lists the
    threads held. The resume threads are the only callers: the run is started before this."""

    def __init__(self, monkeypatch, method: str, when=lambda *args: True):
        self.go, self.arrived, original = threading.Event(), [], getattr(AgentRuntime, method)

        def held(runtime, *args):
            if not self.go.is_set() and when(*args):
                self.arrived.append(threading.current_thread().name)
                assert self.go.wait(10), "never let go"
            return original(runtime, *args)

        monkeypatch.setattr(AgentRuntime, method, held)

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while len(self.arrived) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.arrived) >= count, self.arrived


def approve(client: TestClient, run_id: str, call_key: str) -> dict:
    response = client.post(f"/api/agents/runs/{run_id}/approvals", json={"approve": True, "call_key": call_key})
    assert response.status_code == 200, response.text
    return response.json()


def resume_threads(run_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"resume-{run_id}"]


def resume_threads_done(run_id: str) -> None:
    for thread in resume_threads(run_id):
        thread.join(20)
        assert not thread.is_alive()


def ledger(tmp_path: Path) -> list[str]:
    return sorted((tmp_path / "workspace" / "ledger.txt").read_text().splitlines())


def test_a_second_approval_while_the_run_executes_starts_no_second_executor(two_calls_server, tmp_path, monkeypatch):
    """The first approval's executor is held before it reads the decisions; the second approval comes meanwhile. Two
    executors would each find both calls approved, and append each line twice."""
    client = waiting_on_two_calls(two_calls_server, tmp_path, "approved-twice")
    hold = Hold(monkeypatch, "_ask_approvals")
    with client:
        assert approve(client, "approved-twice", "step0/tool0")["resumed"] is True
        hold.wait_for(1)
        second = approve(client, "approved-twice", "step0/tool1")
        hold.wait_for(len(resume_threads("approved-twice")))  # every executor there is has read the journal
        hold.go.set()
        resume_threads_done("approved-twice")
    assert ledger(tmp_path) == ["step0/tool0 first", "step0/tool1 second"]  # each approved call ran once
    conn = open_database(tmp_path / "lmstack.db")
    assert get_run(conn, "approved-twice").status == "completed"
    conn.close()
    # Recorded, for the running executor to take up: no second one.
    assert second == {"decided": ["step0/tool1"], "approve": True, "resumed": False}


def test_a_call_decided_as_its_executor_pauses_on_it_is_still_resumed(two_calls_server, tmp_path, monkeypatch):
    """The executor of the first approval finds the second call pending and is held just before it records the run
    `waiting`; the second approval comes then. The run must not stay `waiting` on a call already decided."""
    client = waiting_on_two_calls(two_calls_server, tmp_path, "decided-at-pause")
    hold = Hold(monkeypatch, "_finish", lambda status, *rest: status == "waiting")
    with client:
        assert approve(client, "decided-at-pause", "step0/tool0")["resumed"] is True
        hold.wait_for(1)
        second = approve(client, "decided-at-pause", "step0/tool1")
        hold.go.set()
        resume_threads_done("decided-at-pause")
    conn = open_database(tmp_path / "lmstack.db")
    assert get_run(conn, "decided-at-pause").status == "completed"  # not `waiting` on nothing
    conn.close()
    assert ledger(tmp_path) == ["step0/tool0 first", "step0/tool1 second"]
    assert second["resumed"] is False  # the first executor resumed the run itself


def test_an_approval_for_a_run_this_process_executes_rebuilds_no_agent(two_calls_server, tmp_path, monkeypatch):
    """The second approval comes while the first's executor runs; its tools file then no longer loads. Its executor
    loaded them already and takes the decision up; rebuilding the agent for the approval (its tools loaded again, a
    checkpoint's weights too) would refuse it, 409, though the run goes on here."""
    tools = tmp_path / "ledger_tools.py"
    tools.write_text(APPROVAL_TOOLS.read_text())
    client = waiting_on_two_calls(two_calls_server, tmp_path, "rebuilt-once", tools)
    hold = Hold(monkeypatch, "_ask_approvals")
    with client:
        assert approve(client, "rebuilt-once", "step0/tool0")["resumed"] is True
        hold.wait_for(1)
        tools.write_text("def broken(:\n")
        second = approve(client, "rebuilt-once", "step0/tool1")
        hold.go.set()
        resume_threads_done("rebuilt-once")
    assert second == {"decided": ["step0/tool1"], "approve": True, "resumed": False}
    assert ledger(tmp_path) == ["step0/tool0 first", "step0/tool1 second"]
    conn = open_database(tmp_path / "lmstack.db")
    assert get_run(conn, "rebuilt-once").status == "completed"
    conn.close()
