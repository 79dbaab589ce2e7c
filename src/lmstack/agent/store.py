"""The agent layer's tables in the one lmstack database, and the run records.

Run statuses: running, waiting (a tool call needs approval), completed, failed (the model endpoint
failed for good, or the model kept replying with nothing), budget_exceeded, loop_detected, no_progress,
stopped_by_monitor. `running`, `waiting` and `failed` runs can be resumed: a failed run continues from its
last completed step once the endpoint is back (the failed step is redone, the steps before it replayed from
the journal). The other ended runs would only end the same way again.

Readers see one more status, never stored: `interrupted`, a `running` run whose recorded process is gone
(killed without a word: SIGKILL, the OOM killer, a power loss; or stopped by Ctrl-C). Reading never writes: the
reader may be another user's dashboard, and the process may be alive on another host (then the run shows
`running`).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Collection, Mapping

from lmstack.db import ensure_schema, transaction
from lmstack.errors import LmstackError
from lmstack.run_owner import Owner, busy_reason, ended_unfinished, executed_elsewhere, process_state, this_process

MIGRATIONS = [
    """
    CREATE TABLE agent_runs (
        id TEXT PRIMARY KEY, task TEXT NOT NULL, status TEXT NOT NULL, stop_reason TEXT, final_answer TEXT,
        config TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
        active_seconds REAL NOT NULL DEFAULT 0, steps INTEGER NOT NULL DEFAULT 0,
        prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0);
    CREATE TABLE agent_journal (
        run_id TEXT NOT NULL REFERENCES agent_runs(id), key TEXT NOT NULL, kind TEXT NOT NULL,
        status TEXT NOT NULL, request TEXT NOT NULL, response TEXT, idempotency_key TEXT,
        started_at REAL NOT NULL, completed_at REAL, PRIMARY KEY (run_id, key));
    CREATE TABLE agent_approvals (
        run_id TEXT NOT NULL REFERENCES agent_runs(id), call_key TEXT NOT NULL, tool TEXT NOT NULL,
        arguments TEXT NOT NULL, decision TEXT NOT NULL, decided_at REAL, PRIMARY KEY (run_id, call_key));
    CREATE TABLE agent_spans (
        run_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, name TEXT NOT NULL, kind TEXT NOT NULL,
        start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL, status TEXT NOT NULL DEFAULT 'ok',
        attributes TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (run_id, span_id));
    CREATE TABLE agent_events (
        run_id TEXT NOT NULL, event_key TEXT NOT NULL, span_id TEXT NOT NULL, monitor TEXT NOT NULL,
        action TEXT NOT NULL, message_key TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL,
        text TEXT NOT NULL, detail TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (run_id, event_key));
    """,
    # The process executing a run, so a second `resume` of a live run is refused.
    "ALTER TABLE agent_runs ADD COLUMN owner_pid INTEGER;",
    # ... on which host, since when (see lmstack.run_owner): a pid of another machine, or reused by an unrelated
    # process since the run's died, must not keep the run from being resumed. Runs recorded before have neither
    # (see owner_read_here).
    "ALTER TABLE agent_runs ADD COLUMN owner_host TEXT;\nALTER TABLE agent_runs ADD COLUMN owner_start TEXT;",
]

RESUMABLE = ("running", "waiting", "failed", "interrupted")
STATUSES = ("running", "interrupted", "waiting", "completed", "failed", "budget_exceeded", "loop_detected",
            "no_progress", "stopped_by_monitor")


class RunNotFoundError(LmstackError):
    """No agent run has the given id."""


class UnknownStatusError(LmstackError):
    """A status asked for that no run can have: a typo would list no runs, as if there were none."""


@dataclass
class RunRecord:
    id: str
    task: str
    status: str
    stop_reason: str | None
    final_answer: str | None
    config: dict[str, Any]
    created_at: float
    updated_at: float
    active_seconds: float
    steps: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def open_agent_tables(conn: sqlite3.Connection) -> sqlite3.Connection:
    ensure_schema(conn, "agent", MIGRATIONS)
    return conn


def create_run(conn: sqlite3.Connection, run_id: str, task: str, config: dict[str, Any]) -> None:
    """Record a new `running` run, with this process as its executor from the start: killed before its first step,
    it shows as `interrupted`, not `running` forever."""
    now, me = time.time(), this_process()
    with transaction(conn):
        if conn.execute("SELECT 1 FROM agent_runs WHERE id = ?", (run_id,)).fetchone():
            raise LmstackError(f"run id '{run_id}' already exists; use `lmstack agent resume {run_id}` or a new --run-id")
        conn.execute("INSERT INTO agent_runs (id, task, status, config, created_at, updated_at, owner_pid, owner_host, "
                     "owner_start) VALUES (?,?,?,?,?,?,?,?,?)",
                     (run_id, task, "running", json.dumps(config), now, now, me.pid, me.host, me.start))


def get_run(conn: sqlite3.Connection, run_id: str, interrupted: Collection[str] | None = None) -> RunRecord:
    """The run as readers see it (see `shown_state`)."""
    row = conn.execute("SELECT * FROM agent_runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        raise RunNotFoundError(f"no agent run with id '{run_id}'; `lmstack agent list` shows the runs")
    return _record(conn, row, interrupted)


def _record(conn: sqlite3.Connection, row: sqlite3.Row, interrupted: Collection[str] | None) -> RunRecord:
    """The RunRecord of a whole agent_runs row, as readers see it."""
    data = {k: row[k] for k in row.keys() if not k.startswith("owner_")}  # the executing process: claim_run's to check
    data["config"] = json.loads(data["config"])
    data["status"], data["stop_reason"] = shown_state(conn, row, interrupted)
    return RunRecord(**data)


def shown_state(conn: sqlite3.Connection, row: sqlite3.Row,
                interrupted: Collection[str] | None = None) -> tuple[str, str | None]:
    """The status and stop reason of a run's row (its id, status, stop reason and owner columns) as of now: a
    `running` run whose process is gone is `interrupted` (one of `interrupted_runs`, when the caller has them); a
    `waiting` run's reason names the calls still pending, which a decision since it paused may have changed."""
    status, reason = row["status"], row["stop_reason"]
    ended = ended_unfinished(owner_read_here(row),
                             f"`lmstack agent resume {row['id']}` continues it from the last completed step",
                             None if interrupted is None else row["id"] in interrupted)
    if ended:  # a reason already recorded says what interrupted it (Ctrl-C, an unexpected error), and how to go on
        return "interrupted", reason or ended
    if status == "waiting":
        pending = conn.execute("SELECT tool, call_key FROM agent_approvals WHERE run_id = ? AND decision = 'pending' "
                               "ORDER BY rowid", (row["id"],)).fetchall()
        return status, waiting_reason(row["id"], [f"{r['tool']} ({r['call_key']})" for r in pending])
    return status, reason


def waiting_reason(run_id: str, pending: list[str]) -> str:
    """Why a waiting run waits, given its pending calls ('tool (call key)'), and what goes on with it."""
    if not pending:  # decided, but the resume that should have followed never started (or was not asked for)
        return f"its tool calls are decided, but the run was not resumed: `lmstack agent resume {run_id}` continues it"
    return f"approval needed for {', '.join(pending)}: run `lmstack agent approve {run_id}` (or --deny)"


def interrupted_runs(conn: sqlite3.Connection) -> list[str]:
    """The ids of the runs shown as `interrupted` (stored as `running`, their process gone)."""
    rows = conn.execute("SELECT id, owner_pid, owner_host, owner_start FROM agent_runs WHERE status = 'running'")
    return [r["id"] for r in rows if process_state(Owner.from_row(owner_read_here(r))) == "gone"]


def owner_read_here(row: sqlite3.Row) -> Mapping[str, Any]:
    """The run's row, with the owner this process reads in it. The lmstack that recorded only the executing process's
    pid (schema version 2: owner host and start NULL) looked the pid up on its own host; so does this one, taking it
    for a pid of this host, unverified. Read as another host's, such a run whose process is gone showed `running` for
    good, and one whose process lives could be resumed by a second process."""
    if row["owner_pid"] is None or row["owner_host"] is not None:
        return row
    return {**{key: row[key] for key in row.keys()}, "owner_host": socket.gethostname()}


def status_condition(status: str, interrupted: list[str]) -> tuple[str, tuple]:
    """An SQL condition on agent_runs, and its parameters, for the runs shown with `status`: `interrupted` ones
    (the ids `interrupted_runs` gives) are stored as `running`, which therefore leaves them out."""
    if status not in STATUSES:
        raise UnknownStatusError(f"status '{status}' is not a run status; use one of {', '.join(STATUSES)}")
    if status not in ("running", "interrupted"):
        return "status = ?", (status,)
    among = "IN" if status == "interrupted" else "NOT IN"
    return f"status = 'running' AND id {among} (SELECT value FROM json_each(?))", (json.dumps(interrupted),)


def runs_shown_as(conn: sqlite3.Connection, status: str | None) -> tuple[str, tuple, list[str]]:
    """A WHERE clause on agent_runs ("" for every run) and its parameters, for the runs shown with `status`; and the
    ids of the interrupted runs, which it needed (looked up once: each is a look at a process)."""
    interrupted = interrupted_runs(conn)
    if status is None:
        return "", (), interrupted
    condition, params = status_condition(status, interrupted)
    return f"WHERE {condition}", params, interrupted


def list_runs(conn: sqlite3.Connection, status: str | None = None, limit: int = 50) -> list[RunRecord]:
    where, params, interrupted = runs_shown_as(conn, status)
    rows = conn.execute(f"SELECT * FROM agent_runs {where} ORDER BY created_at DESC, id LIMIT ?", (*params, limit))
    return [_record(conn, row, interrupted) for row in rows.fetchall()]


def update_run(conn: sqlite3.Connection, run_id: str, **fields: Any) -> None:
    assignments = ", ".join(f"{name} = ?" for name in fields)
    with transaction(conn):
        conn.execute(f"UPDATE agent_runs SET {assignments}, updated_at = ? WHERE id = ?",
                     (*fields.values(), time.time(), run_id))


def claim_run(conn: sqlite3.Connection, run_id: str) -> bool:
    """Mark this process as the run's executor (status `running`, the last stop reason cleared); refuse if another
    live process already is. False, claiming nothing, when the run can no longer be resumed (another process
    finished it since the caller read its status). Read and write in one transaction: of two processes resuming
    one failed or waiting run, the second finds it `running` under the first and is refused."""
    me = this_process()
    with transaction(conn):
        row = conn.execute("SELECT status, owner_pid, owner_host, owner_start FROM agent_runs WHERE id = ?",
                           (run_id,)).fetchone()
        if row["status"] not in RESUMABLE:
            return False
        owner = Owner.from_row(owner_read_here(row))
        if row["status"] == "running" and executed_elsewhere(owner):
            raise LmstackError(f"run '{run_id}' {busy_reason(owner)}")
        conn.execute("UPDATE agent_runs SET owner_pid = ?, owner_host = ?, owner_start = ?, status = 'running', "
                     "stop_reason = NULL, updated_at = ? WHERE id = ?",
                     (me.pid, me.host, me.start, time.time(), run_id))
    return True


def decided_while_waiting(conn: sqlite3.Connection, run_id: str) -> bool:
    """Whether the run is `waiting` with no call left pending: each call it paused on was decided after its executor
    read it as pending. Only that executor, still holding the run, can resume it (see `executing.ExecutingRuns`)."""
    row = conn.execute("SELECT status FROM agent_runs WHERE id = ?", (run_id,)).fetchone()
    return row["status"] == "waiting" and conn.execute(
        "SELECT 1 FROM agent_approvals WHERE run_id = ? AND decision = 'pending' LIMIT 1", (run_id,)).fetchone() is None
