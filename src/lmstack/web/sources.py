"""The dashboard's handles on the database: one eval `Store` (it locks its own connection) and one
agent-table connection per server thread (FastAPI runs the blocking read endpoints in a thread pool)."""

from __future__ import annotations

import sqlite3
import threading

from lmstack.agent.launch import open_database
from lmstack.db import connect
from lmstack.evals.store import Store
from lmstack.web.settings import DashboardSettings


class DataSources:
    def __init__(self, settings: DashboardSettings):
        self.settings = settings
        open_database(settings.db_path).close()  # the agent tables exist before any reader needs them
        self.eval_store = Store(settings.db_path)
        self._local = threading.local()

    def agent_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.settings.db_path)
        return conn
