"""Eval runs, per-sample results and the response cache, in the one SQLite database (lmstack.db).

A sample result is written in its own transaction as soon as it is scored, so a run killed at any
instant keeps every finished sample; `lmstack eval run --resume RUN_ID` skips them. Each run records the
process executing it (see lmstack.run_owner): a 'running' run whose process is gone reads as 'interrupted'.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmstack.db import connect, ensure_schema, transaction
from lmstack.errors import LmstackError
from lmstack.run_ids import check_run_id
from lmstack.run_owner import Owner, busy_reason, ended_unfinished, executed_elsewhere, this_process

MIGRATIONS = [
    """
    CREATE TABLE eval_runs (
        id TEXT PRIMARY KEY, task TEXT NOT NULL, model TEXT NOT NULL, config TEXT NOT NULL,
        status TEXT NOT NULL, created REAL NOT NULL, finished REAL, summary TEXT, environment TEXT);
    CREATE TABLE eval_samples (
        run_id TEXT NOT NULL REFERENCES eval_runs(id), sample_id TEXT NOT NULL, epoch INTEGER NOT NULL,
        status TEXT NOT NULL, sample TEXT NOT NULL, output TEXT, scores TEXT NOT NULL, events TEXT NOT NULL,
        usage TEXT NOT NULL, error TEXT, created REAL NOT NULL,
        PRIMARY KEY (run_id, sample_id, epoch));
    CREATE TABLE eval_cache (
        key TEXT PRIMARY KEY, endpoint TEXT NOT NULL, request TEXT NOT NULL, response TEXT NOT NULL,
        created REAL NOT NULL);
    """,
    "ALTER TABLE eval_runs ADD COLUMN error TEXT;",  # why a run failed (status 'failed')
    # The process executing the run: a SIGKILLed run must not read as 'running' forever, nor be resumed twice.
    "ALTER TABLE eval_runs ADD COLUMN owner_pid INTEGER;\nALTER TABLE eval_runs ADD COLUMN owner_host TEXT;",
    # ... and its start: a pid reused by an unrelated process (after a reboot, say) must not pass for the run's.
    "ALTER TABLE eval_runs ADD COLUMN owner_start TEXT;",
]


class RunNotFound(LmstackError):
    """An eval run id that is not in the database."""


class RunExists(LmstackError):
    """A new run named with an id that is taken."""


class RunBusy(LmstackError):
    """A run to resume that another live process is executing."""


@dataclass
class SampleRecord:
    """One (sample, epoch) result as stored."""
    sample_id: str
    epoch: int
    status: str  # 'done' | 'error'
    sample: dict[str, Any]
    output: str | None
    scores: dict[str, dict[str, Any]]  # scorer name -> Score.to_dict()
    events: list[dict[str, Any]]
    usage: dict[str, Any]
    error: str | None

    @property
    def group(self) -> str:
        return self.sample.get("group") or self.sample_id

    @property
    def failure(self) -> str | None:
        """Why this result lacks a score: the sample's error, else the first failed scorer's; None when it has all."""
        if self.error:
            return self.error
        return next((f"scorer '{name}' failed: {score['error']}" for name, score in self.scores.items()
                     if score.get("error")), None)


@dataclass
class RunRecord:
    id: str
    task: str
    model: str
    config: dict[str, Any]
    status: str  # 'running' | 'finished' | 'failed' | 'interrupted' (read as such: 'running', its process gone)
    created: float
    finished: float | None
    summary: dict[str, Any] | None
    environment: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # why a 'failed' or 'interrupted' run stopped


class Store:
    """Thread-safe access to the eval tables (one connection; a lock keeps transactions whole)."""

    def __init__(self, db_path: str | Path | None = None):
        self.path = str(db_path) if db_path is not None else None
        self.conn: sqlite3.Connection = connect(db_path)
        ensure_schema(self.conn, "evals", MIGRATIONS)
        self.lock = self.conn.lock  # the connection's re-entrant lock, which `transaction` takes too

    def close(self) -> None:
        self.conn.close()

    # ---- runs -----------------------------------------------------------------------------------
    def create_run(self, task: str, model: str, config: dict[str, Any], environment: dict[str, Any],
                   run_id: str | None = None) -> str:
        run_id = check_run_id(run_id) if run_id is not None else time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        owner = this_process()
        with transaction(self.conn):
            if self.conn.execute("SELECT 1 FROM eval_runs WHERE id = ?", (run_id,)).fetchone():
                raise RunExists(f"eval run '{run_id}' already exists; continue it with --resume {run_id} "
                                "or pick another --run-id")
            self.conn.execute(
                "INSERT INTO eval_runs (id, task, model, config, status, created, environment, owner_pid, owner_host, "
                "owner_start) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (run_id, task, model, json.dumps(config), "running", time.time(), json.dumps(environment),
                 owner.pid, owner.host, owner.start))
        return run_id

    def run(self, run_id: str) -> RunRecord:
        with self.lock:
            row = self.conn.execute("SELECT * FROM eval_runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"no eval run '{run_id}' in the database; `lmstack eval list` shows the runs")
        return _run_record(row)

    def runs(self, limit: int = 50, offset: int = 0) -> list[RunRecord]:
        """A page of runs, newest first (one query)."""
        with self.lock:
            rows = self.conn.execute("SELECT * FROM eval_runs ORDER BY created DESC, id LIMIT ? OFFSET ?",
                                     (limit, offset)).fetchall()
        return [_run_record(r) for r in rows]

    def runs_page(self, offset: int = 0, limit: int = 50) -> tuple[int, list[RunRecord]]:
        """The total number of runs and a page of them, newest first."""
        with self.lock:  # reentrant: the count and the page are read under one hold
            total = self.conn.execute("SELECT COUNT(*) FROM eval_runs").fetchone()[0]
            return total, self.runs(limit, offset)

    def finish_run(self, run_id: str, summary: dict[str, Any]) -> None:
        with transaction(self.conn):
            self.conn.execute("UPDATE eval_runs SET status = 'finished', finished = ?, summary = ?, error = NULL "
                              "WHERE id = ?",
                              (time.time(), json.dumps(summary), run_id))

    def claim_run(self, run_id: str, config: dict[str, Any]) -> None:
        """Make this process the executor of a run being resumed with `config`: running again (a failed one no
        longer shows its old error meanwhile). Refused while another live process of this host executes it: two
        processes writing one run would each solve the samples the other has in flight."""
        me = this_process()
        with transaction(self.conn):
            row = self.conn.execute("SELECT status, owner_pid, owner_host, owner_start FROM eval_runs WHERE id = ?",
                                    (run_id,)).fetchone()
            owner = Owner.from_row(row)
            if row["status"] == "running" and executed_elsewhere(owner):
                raise RunBusy(f"eval run '{run_id}' {busy_reason(owner)}")
            self.conn.execute("UPDATE eval_runs SET status = 'running', finished = NULL, error = NULL, config = ?, "
                              "owner_pid = ?, owner_host = ?, owner_start = ? WHERE id = ?",
                              (json.dumps(config), me.pid, me.host, me.start, run_id))

    def fail_run(self, run_id: str, error: str) -> None:
        """Mark a run that died mid-way; its finished samples stay, and `--resume` can continue it."""
        with transaction(self.conn):
            self.conn.execute("UPDATE eval_runs SET status = 'failed', finished = ?, error = ? WHERE id = ?",
                              (time.time(), error, run_id))

    # ---- samples --------------------------------------------------------------------------------
    def save_sample(self, run_id: str, record: SampleRecord) -> None:
        with transaction(self.conn):
            self.conn.execute(
                "INSERT OR REPLACE INTO eval_samples (run_id, sample_id, epoch, status, sample, output, scores, "
                "events, usage, error, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (run_id, record.sample_id, record.epoch, record.status, json.dumps(record.sample), record.output,
                 json.dumps(record.scores), json.dumps(record.events, default=str), json.dumps(record.usage),
                 record.error, time.time()))

    def completed(self, run_id: str) -> set[tuple[str, int]]:
        """(sample id, epoch) pairs finished without an error. Sample errors and scorer errors (a judge endpoint
        that was down, say) are retried on resume; the model calls that did succeed come from the cache."""
        with self.lock:
            rows = self.conn.execute("SELECT sample_id, epoch, scores FROM eval_samples "
                                     "WHERE run_id = ? AND status = 'done'", (run_id,)).fetchall()
        return {(r["sample_id"], r["epoch"]) for r in rows if not _scorer_failed(r["scores"])}

    def first_error(self, run_id: str) -> SampleRecord | None:
        """The run's earliest (sample, epoch) that failed or that a scorer failed on, or None: what `eval run` shows
        of its errors (its `failure` says which)."""
        with self.lock:
            rows = self.conn.execute("SELECT sample_id, epoch, status, scores FROM eval_samples WHERE run_id = ? "
                                     "ORDER BY created, sample_id, epoch", (run_id,)).fetchall()
        failed = next((r for r in rows if r["status"] == "error" or _scorer_failed(r["scores"])), None)
        return self.sample(run_id, failed["sample_id"], failed["epoch"]) if failed else None

    def samples(self, run_id: str, transcripts: bool = True) -> list[SampleRecord]:
        """The run's results. Without `transcripts` their events and output are left empty: what a summary reads,
        without the bulk of a long agent run's rows (the dashboard summarizes unfinished runs on each look)."""
        columns = "*" if transcripts else ("sample_id, epoch, status, sample, NULL AS output, scores, '[]' AS events, "
                                           "usage, error")
        with self.lock:
            rows = self.conn.execute(f"SELECT {columns} FROM eval_samples WHERE run_id = ? "
                                     "ORDER BY created, sample_id, epoch", (run_id,)).fetchall()
        return [_sample_record(r) for r in rows]

    def samples_page(self, run_id: str, offset: int = 0, limit: int = 50) -> tuple[int, list[dict[str, Any]]]:
        """The run's sample count and a page of light rows (sample_id, epoch, status, scores, error), without
        inputs, outputs or transcripts. Raises RunNotFound for an unknown run."""
        with self.lock:
            if self.conn.execute("SELECT 1 FROM eval_runs WHERE id = ?", (run_id,)).fetchone() is None:
                raise RunNotFound(f"no eval run '{run_id}' in the database; `lmstack eval list` shows the runs")
            total = self.conn.execute("SELECT COUNT(*) FROM eval_samples WHERE run_id = ?", (run_id,)).fetchone()[0]
            rows = self.conn.execute("SELECT sample_id, epoch, status, scores, error FROM eval_samples "
                                     "WHERE run_id = ? ORDER BY created, sample_id, epoch LIMIT ? OFFSET ?",
                                     (run_id, limit, offset)).fetchall()
        return total, [dict(r) | {"scores": json.loads(r["scores"])} for r in rows]

    def sample(self, run_id: str, sample_id: str, epoch: int = 0) -> SampleRecord:
        """One (sample, epoch) result, transcript included. Raises RunNotFound when there is none."""
        with self.lock:
            r = self.conn.execute("SELECT * FROM eval_samples WHERE run_id = ? AND sample_id = ? AND epoch = ?",
                                  (run_id, sample_id, epoch)).fetchone()
        if r is None:
            raise RunNotFound(f"eval run '{run_id}' has no sample '{sample_id}' (epoch {epoch})")
        return _sample_record(r)

    # ---- response cache -------------------------------------------------------------------------
    def cached_response(self, key: str) -> dict[str, Any] | None:
        with self.lock:
            row = self.conn.execute("SELECT response FROM eval_cache WHERE key = ?", (key,)).fetchone()
        return json.loads(row["response"]) if row else None

    def cache_response(self, key: str, endpoint: str, request: dict[str, Any], response: dict[str, Any]) -> None:
        with transaction(self.conn):
            self.conn.execute("INSERT OR REPLACE INTO eval_cache (key, endpoint, request, response, created) "
                              "VALUES (?,?,?,?,?)", (key, endpoint, json.dumps(request), json.dumps(response), time.time()))


def _run_record(row: sqlite3.Row) -> RunRecord:
    status, error = row["status"], row["error"]
    ended = ended_unfinished(row, f"continue it with --resume {row['id']}")
    if ended:  # killed without a word: only the dead process says so
        status, error = "interrupted", ended
    return RunRecord(row["id"], row["task"], row["model"], json.loads(row["config"]), status,
                     row["created"], row["finished"], json.loads(row["summary"]) if row["summary"] else None,
                     json.loads(row["environment"] or "{}"), error)


def _scorer_failed(scores_json: str) -> bool:
    return any(score.get("error") for score in json.loads(scores_json).values())


def _sample_record(row: sqlite3.Row) -> SampleRecord:
    return SampleRecord(row["sample_id"], row["epoch"], row["status"], json.loads(row["sample"]), row["output"],
                        json.loads(row["scores"]), json.loads(row["events"]), json.loads(row["usage"]), row["error"])
