"""The write-ahead journal of a run: every model call and tool call, before and after it happens.

A resumed run re-executes its loop from the start; each operation first looks up its key here.
Completed operations are replayed from the stored response, so the rebuilt conversation is exactly
the one the crashed process had. An operation that was `started` but never `completed` is run
again -- model calls are safe to repeat; a side-effecting tool gets the same idempotency key as the
first attempt, so a tool that records its effect under that key does not act twice.

A step that failed with nothing to show (every reply empty) is set aside when the run fails: its calls move
to keys of their own, so that resuming the run redoes the step rather than replaying it to the same end.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from lmstack.db import transaction

SET_ASIDE = "~failed"  # the key of a call set aside for a redo ends so: step3/model0~failed1, then ~failed2, ...


@dataclass
class JournalEntry:
    key: str
    kind: str
    status: str  # started | completed
    request: Any
    response: Any
    idempotency_key: str | None
    started_at: float
    completed_at: float | None


class Journal:
    def __init__(self, conn: sqlite3.Connection, run_id: str):
        self.conn = conn
        self.run_id = run_id

    def get(self, key: str) -> JournalEntry | None:
        row = self.conn.execute("SELECT * FROM agent_journal WHERE run_id = ? AND key = ?", (self.run_id, key)).fetchone()
        return _entry(row) if row is not None else None

    def start(self, key: str, kind: str, request: Any, idempotency_key: str | None = None) -> None:
        """Record intent; committed before the operation runs. A retry after a crash keeps the first row (its
        request and idempotency key) but starts its clock again: its duration in the trace is the retry's, not the
        hours the run may have lain dead."""
        with transaction(self.conn):
            self.conn.execute("INSERT INTO agent_journal (run_id, key, kind, status, request, idempotency_key, "
                              "started_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT (run_id, key) DO UPDATE SET "
                              "started_at = excluded.started_at WHERE status = 'started'",
                              (self.run_id, key, kind, "started", json.dumps(request), idempotency_key, time.time()))

    def complete(self, key: str, response: Any, request: Any = None) -> None:
        """Record the result; `request`, when given, is what was sent in the end (a model call fitted again after the
        endpoint refused its first prompt as too long), replacing the one `start` recorded."""
        with transaction(self.conn):
            self.conn.execute("UPDATE agent_journal SET status = 'completed', response = ?, completed_at = ?, "
                              "request = COALESCE(?, request) WHERE run_id = ? AND key = ?",
                              (json.dumps(response), time.time(), None if request is None else json.dumps(request),
                               self.run_id, key))

    def entries(self) -> list[JournalEntry]:
        """Every entry, in the order they started: one query (a query per key made each step's progress save, which
        reads them all, slower the longer the run)."""
        rows = self.conn.execute("SELECT * FROM agent_journal WHERE run_id = ? ORDER BY started_at, key",
                                 (self.run_id,)).fetchall()
        return [_entry(row) for row in rows]

    def set_aside_step(self, step: int) -> list[tuple[str, str]]:
        """Move the step's calls (those not set aside before) to new keys, so a resumed run finds none and redoes
        the step; they stay in the journal as a record of what was tried and paid for. (old key, new key) pairs."""
        moved = []
        with transaction(self.conn):
            keys = [r["key"] for r in self.conn.execute("SELECT key FROM agent_journal WHERE run_id = ? AND key LIKE ?",
                                                        (self.run_id, f"step{step}/%"))]
            for key in keys:
                if SET_ASIDE in key:
                    continue
                new_key = f"{key}{SET_ASIDE}{1 + sum(k.startswith(key + SET_ASIDE) for k in keys)}"
                self.conn.execute("UPDATE agent_journal SET key = ? WHERE run_id = ? AND key = ?",
                                  (new_key, self.run_id, key))
                moved.append((key, new_key))
        return moved


def _entry(row) -> JournalEntry:
    return JournalEntry(row["key"], row["kind"], row["status"], json.loads(row["request"]),
                        json.loads(row["response"]) if row["response"] is not None else None,
                        row["idempotency_key"], row["started_at"], row["completed_at"])
