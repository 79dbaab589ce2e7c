"""Spans for runs, steps, model calls and tool calls, stored in SQLite; a tree printer; OTel JSON export.

Span ids are derived from the run id and the journal key, so a resumed run that replays an
operation writes the same span again (INSERT OR IGNORE) instead of a duplicate. Monitor events are
attached to the span of the model call whose message they flag.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from lmstack.db import transaction


def span_id(run_id: str, key: str) -> str:
    return hashlib.sha256(f"{run_id}/{key}".encode()).hexdigest()[:16]


def trace_id(run_id: str) -> str:
    return hashlib.sha256(run_id.encode()).hexdigest()[:32]


@dataclass
class Span:
    span_id: str
    parent_id: str | None
    name: str
    kind: str  # run | step | model | tool
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    children: list["Span"] = field(default_factory=list)


class Tracer:
    def __init__(self, conn: sqlite3.Connection, run_id: str):
        self.conn = conn
        self.run_id = run_id

    def record(self, key: str, parent_key: str | None, name: str, kind: str, start_s: float, end_s: float,
               attributes: dict[str, Any], status: str = "ok", replace: bool = False) -> str:
        sid = span_id(self.run_id, key)
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        with transaction(self.conn):
            self.conn.execute(f"{verb} INTO agent_spans (run_id, span_id, parent_id, name, kind, start_ns, end_ns, "
                              "status, attributes) VALUES (?,?,?,?,?,?,?,?,?)",
                              (self.run_id, sid, span_id(self.run_id, parent_key) if parent_key else None, name, kind,
                               int(start_s * 1e9), int(end_s * 1e9), status, json.dumps(attributes)))
        return sid

    def event(self, event_key: str, span_key: str, monitor: str, action: str, message_key: str, start: int, end: int,
              text: str, detail: str) -> None:
        with transaction(self.conn):
            self.conn.execute("INSERT OR IGNORE INTO agent_events (run_id, event_key, span_id, monitor, action, "
                              "message_key, start, end, text, detail, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                              (self.run_id, event_key, span_id(self.run_id, span_key), monitor, action, message_key,
                               start, end, text, detail, time.time()))

    def move(self, old_key: str, new_key: str) -> None:
        """Re-key a call's span and its monitor events when the journal moves the call (`Journal.set_aside_step`):
        the call made again under the old key then gets a span and events of its own."""
        old_id, new_id, rest = span_id(self.run_id, old_key), span_id(self.run_id, new_key), len(old_key) + 1
        with transaction(self.conn):
            self.conn.execute("UPDATE agent_spans SET span_id = ?, name = replace(name, ?, ?) WHERE run_id = ? "
                              "AND span_id = ?", (new_id, old_key, new_key, self.run_id, old_id))
            self.conn.execute("UPDATE agent_events SET span_id = ?, event_key = ? || substr(event_key, ?), "
                              "message_key = ? || substr(message_key, ?) WHERE run_id = ? AND span_id = ?",
                              (new_id, new_key, rest, new_key, rest, self.run_id, old_id))


def load_events(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM agent_events WHERE run_id = ? ORDER BY created_at, event_key", (run_id,))
    return [dict(r) for r in rows]


def load_tree(conn: sqlite3.Connection, run_id: str) -> list[Span]:
    spans = {}
    for r in conn.execute("SELECT * FROM agent_spans WHERE run_id = ? ORDER BY start_ns", (run_id,)):
        spans[r["span_id"]] = Span(r["span_id"], r["parent_id"], r["name"], r["kind"], r["start_ns"], r["end_ns"],
                                   r["status"], json.loads(r["attributes"]))
    for event in load_events(conn, run_id):
        if event["span_id"] in spans:
            spans[event["span_id"]].events.append(event)
    roots = []
    for s in spans.values():
        parent = spans.get(s.parent_id) if s.parent_id else None
        (parent.children if parent else roots).append(s)
    return roots


def format_tree(roots: list[Span]) -> str:
    lines: list[str] = []

    def walk(s: Span, depth: int) -> None:
        a = s.attributes
        facts = [f"{(s.end_ns - s.start_ns) / 1e6:.0f} ms"]
        if "prompt_tokens" in a:
            facts.append(f"{a['prompt_tokens']}+{a['completion_tokens']} tok")
        if a.get("cost_usd"):
            facts.append(f"${a['cost_usd']:.6f}")
        if "status" in a:
            facts.append(str(a["status"]))
        marker = "" if s.status == "ok" else f" [{s.status}]"
        lines.append(f"{'  ' * depth}{s.name}{marker}  ({', '.join(facts)})")
        for e in s.events:
            lines.append(f"{'  ' * (depth + 1)}! {e['monitor']} ({e['action']}) chars {e['start']}-{e['end']} "
                         f"{e['text']!r}: {e['detail']}")
        for child in s.children:
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return "\n".join(lines)


def _otel_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # OTLP JSON encodes 64-bit ints as strings
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": value if isinstance(value, str) else json.dumps(value)}


def to_otel(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """The run's spans as an OTLP/JSON `ExportTraceServiceRequest` (what collectors accept on /v1/traces)."""
    flat: list[Span] = []

    def collect(s: Span) -> None:
        flat.append(s)
        for child in s.children:
            collect(child)

    for root in load_tree(conn, run_id):
        collect(root)
    spans = []
    for s in flat:
        span = {"traceId": trace_id(run_id), "spanId": s.span_id, "name": s.name, "kind": 1,
                "startTimeUnixNano": str(s.start_ns), "endTimeUnixNano": str(s.end_ns),
                "attributes": [{"key": f"lmstack.{k}", "value": _otel_value(v)} for k, v in s.attributes.items()]
                + [{"key": "lmstack.span_kind", "value": _otel_value(s.kind)}],
                "status": {"code": 1 if s.status == "ok" else 2, "message": "" if s.status == "ok" else s.status},
                "events": [{"name": f"monitor.{e['monitor']}", "timeUnixNano": str(int(e["created_at"] * 1e9)),
                            "attributes": [{"key": k, "value": _otel_value(e[k])}
                                           for k in ("action", "message_key", "start", "end", "text", "detail")]}
                           for e in s.events]}
        if s.parent_id:
            span["parentSpanId"] = s.parent_id
        spans.append(span)
    return {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "lmstack-agent"}},
                                    {"key": "lmstack.run_id", "value": {"stringValue": run_id}}]},
        "scopeSpans": [{"scope": {"name": "lmstack.agent"}, "spans": spans}]}]}
