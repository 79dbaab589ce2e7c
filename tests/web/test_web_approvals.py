"""The dashboard's approval route in-process, against a real run waiting for approval and the scripted model,
with every statement its agent-table connections run recorded."""

from __future__ import annotations

import time

from fastapi import FastAPI
from fastapi.testclient import TestClient

from lmstack.agent.launch import open_database, start_run
from lmstack.agent.store import get_run
from lmstack.serve.errors import install_error_handlers
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


def test_approving_reads_the_pending_calls_once_then_resumes_the_run(scripted, tmp_path):
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
