"""The dashboard's handles on the database: one eval `Store` (it locks its own connection) and one
agent-table connection per server thread (FastAPI runs the blocking read endpoints in a thread pool).

Opened on first use, so `lmstack serve` serves its model even where the database cannot be created;
only the dashboard's data routes then answer with the database error.
"""

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
        self._local = threading.local()
        self._lock = threading.Lock()
        self._eval_store: Store | None = None

    @property
    def eval_store(self) -> Store:
        return self._open_tables()

    def _open_tables(self) -> Store:
        with self._lock:
            if self._eval_store is None:
                open_database(self.settings.db_path).close()  # the agent tables exist before any reader needs them
                self._eval_store = Store(self.settings.db_path)
            return self._eval_store

    def agent_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self._open_tables()
            conn = self._local.conn = connect(self.settings.db_path)
        return conn
