"""Read-side views of agent runs for the dashboard: a paged run list and a paged trace.

The agent layer's readers (`store.list_runs`, `journal.entries`, `tracing.load_tree`) load whole runs;
a dashboard over thousands of runs and traces of hundreds of steps needs pages, so these query the
agent tables directly, a page at a time. Model-call requests (the whole conversation so far, which
grows with every step) are never read: a step's own response holds what the trace shows.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from lmstack.agent.store import RESUMABLE, STATUSES, get_run, runs_shown_as, shown_state
from lmstack.agent.tracing import span_id

RUN_COLUMNS = ("id, task, status, stop_reason, created_at, updated_at, active_seconds, steps, prompt_tokens, "
               "completion_tokens, cost_usd")
OWNER_COLUMNS = "owner_pid, owner_host, owner_start"  # read to show a run whose process is gone as `interrupted`
# The step number of a journal key such as 'step12/model0' or 'step12/tool1'.
STEP_OF_KEY = "CAST(substr(key, 5, instr(key, '/') - 5) AS INTEGER)"


def runs_page(conn: sqlite3.Connection, status: str | None, offset: int, limit: int) -> dict[str, Any]:
    """Runs as `agent list` shows them (see `store.shown_state`): statuses and counts include `interrupted`. With
    every status a run can have, which the page offers as filters (the agent store's list, not a copy in the page)."""
    where, params, interrupted = runs_shown_as(conn, status)
    total = conn.execute(f"SELECT COUNT(*) FROM agent_runs {where}", params).fetchone()[0]
    rows = conn.execute(f"SELECT {RUN_COLUMNS}, {OWNER_COLUMNS} FROM agent_runs {where} ORDER BY created_at DESC, id "
                        f"LIMIT ? OFFSET ?", (*params, limit, offset)).fetchall()
    runs = []
    for row in rows:
        run = {k: row[k] for k in row.keys() if not k.startswith("owner_")}
        run["status"], run["stop_reason"] = shown_state(conn, row, interrupted)
        runs.append(run)
    return {"total": total, "offset": offset, "runs": runs, "status_counts": status_counts(conn, interrupted),
            "statuses": list(STATUSES)}


def status_counts(conn: sqlite3.Connection, interrupted: list[str]) -> dict[str, int]:
    counts = {r["status"]: r["n"] for r in conn.execute("SELECT status, COUNT(*) AS n FROM agent_runs GROUP BY status")}
    if interrupted:  # stored as `running`
        counts["interrupted"] = len(interrupted)
        # from another query than `interrupted`: the last running run may have ended in between
        counts["running"] = counts.get("running", 0) - len(interrupted)
        if counts["running"] <= 0:
            del counts["running"]
    return counts


def run_overview(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """The run, its approvals and its trace's length; `resumable`: whether it can still change (a failed or
    interrupted run too, which `lmstack agent resume` continues), so the page keeps following it."""
    record = get_run(conn, run_id)
    approvals = [dict(r) | {"arguments": json.loads(r["arguments"])} for r in conn.execute(
        "SELECT call_key, tool, arguments, decision, decided_at FROM agent_approvals WHERE run_id = ? "
        "ORDER BY call_key", (run_id,))]
    total_steps = conn.execute(f"SELECT COALESCE(MAX({STEP_OF_KEY}) + 1, 0) FROM agent_journal WHERE run_id = ?",
                               (run_id,)).fetchone()[0]
    overview = {k: v for k, v in vars(record).items() if k != "config"}
    return overview | {"model": record.config.get("model_name") or record.config.get("model"),
                       "tools": record.config.get("tools", []), "approvals": approvals, "trace_steps": total_steps,
                       "resumable": record.status in RESUMABLE}


def steps_page(conn: sqlite3.Connection, run_id: str, offset: int, limit: int) -> dict[str, Any]:
    """Steps [offset, offset + limit) of a run: each with its model calls and tool calls, their
    durations, tokens and cost, and the monitor events attached to each model call."""
    if conn.execute("SELECT 1 FROM agent_runs WHERE id = ?", (run_id,)).fetchone() is None:
        get_run(conn, run_id)  # raises the agent layer's not-found error
    rows = conn.execute(
        f"SELECT key, kind, status, CASE WHEN kind = 'tool' THEN request END AS request, response, idempotency_key, "
        f"started_at, completed_at, {STEP_OF_KEY} AS step FROM agent_journal "
        f"WHERE run_id = ? AND step >= ? AND step < ? ORDER BY step, started_at, key",
        (run_id, offset, offset + limit)).fetchall()
    spans = _spans_by_key(conn, run_id, [r["key"] for r in rows])
    events = _events_by_key(conn, run_id, list(spans.values()))
    steps: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        item = _model_item(row) if row["kind"] == "model" else _tool_item(row)
        item["attributes"] = spans.get(row["key"], {}).get("attributes", {})
        item["events"] = events.get(span_id(run_id, row["key"]), [])
        steps.setdefault(row["step"], []).append(item)
    return {"offset": offset, "steps": [{"step": n, "items": items} for n, items in sorted(steps.items())]}


def _spans_by_key(conn: sqlite3.Connection, run_id: str, keys: list[str]) -> dict[str, dict[str, Any]]:
    ids = {span_id(run_id, key): key for key in keys}
    found: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(list(ids), 500):  # SQLite caps the number of bound parameters
        marks = ",".join("?" * len(chunk))
        for r in conn.execute(f"SELECT span_id, status, attributes FROM agent_spans WHERE run_id = ? "
                              f"AND span_id IN ({marks})", (run_id, *chunk)):
            found[ids[r["span_id"]]] = {"span_id": r["span_id"], "status": r["status"],
                                         "attributes": json.loads(r["attributes"])}
    return found


def _events_by_key(conn: sqlite3.Connection, run_id: str, spans: list[dict[str, Any]]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for chunk in _chunks([s["span_id"] for s in spans], 500):
        marks = ",".join("?" * len(chunk))
        for r in conn.execute(f"SELECT span_id, monitor, action, message_key, start, end, text, detail FROM "
                              f"agent_events WHERE run_id = ? AND span_id IN ({marks}) ORDER BY created_at, event_key",
                              (run_id, *chunk)):
            out.setdefault(r["span_id"], []).append(dict(r))
    return out


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _timing(row: sqlite3.Row) -> dict[str, Any]:
    done = row["completed_at"]
    return {"key": row["key"], "status": row["status"], "started_at": row["started_at"],
            "duration_s": None if done is None else done - row["started_at"]}


def _model_item(row: sqlite3.Row) -> dict[str, Any]:
    response = json.loads(row["response"]) if row["response"] else {}
    return {"kind": "model", **_timing(row), "text": response.get("text"), "tool_calls": response.get("tool_calls", []),
            "usage": response.get("usage", {}), "finish_reason": response.get("finish_reason"),
            "model": response.get("model")}


def _tool_item(row: sqlite3.Row) -> dict[str, Any]:
    request = json.loads(row["request"]) if row["request"] else {}
    response = json.loads(row["response"]) if row["response"] else {}
    return {"kind": "tool", **_timing(row), "name": request.get("name") or response.get("name"),
            "arguments": request.get("arguments"), "output": response.get("content"), "ok": response.get("ok"),
            "error_kind": response.get("error_kind"), "idempotency_key": row["idempotency_key"]}

