"""Read-side views of eval runs for the dashboard: paged runs and samples, one sample's transcript,
and a comparison of two runs (the eval layer's paired tests) as JSON.

`Store` loads a run's samples whole, events included; the sample list here reads only the light
columns a page at a time, and one sample's transcript is fetched when it is opened.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from lmstack.evals.compare import compare_runs
from lmstack.evals.store import RunNotFound, Store
from lmstack.evals.summary import _finite  # NaN -> None: JSON has no NaN


def runs_page(store: Store, offset: int, limit: int) -> dict[str, Any]:
    with store.lock:
        total = store.conn.execute("SELECT COUNT(*) FROM eval_runs").fetchone()[0]
        ids = [r["id"] for r in store.conn.execute("SELECT id FROM eval_runs ORDER BY created DESC, id "
                                                   "LIMIT ? OFFSET ?", (limit, offset))]
    return {"total": total, "offset": offset, "runs": [run_detail(store, i) for i in ids]}


def run_detail(store: Store, run_id: str) -> dict[str, Any]:
    return dataclasses.asdict(store.run(run_id))


def samples_page(store: Store, run_id: str, offset: int, limit: int) -> dict[str, Any]:
    store.run(run_id)  # not-found check
    with store.lock:
        total = store.conn.execute("SELECT COUNT(*) FROM eval_samples WHERE run_id = ?", (run_id,)).fetchone()[0]
        rows = store.conn.execute("SELECT sample_id, epoch, status, scores, error FROM eval_samples WHERE run_id = ? "
                                  "ORDER BY created, sample_id, epoch LIMIT ? OFFSET ?",
                                  (run_id, limit, offset)).fetchall()
    return {"total": total, "offset": offset,
            "samples": [dict(r) | {"scores": json.loads(r["scores"])} for r in rows]}


def sample_detail(store: Store, run_id: str, sample_id: str, epoch: int) -> dict[str, Any]:
    with store.lock:
        row = store.conn.execute("SELECT * FROM eval_samples WHERE run_id = ? AND sample_id = ? AND epoch = ?",
                                 (run_id, sample_id, epoch)).fetchone()
    if row is None:
        raise RunNotFound(f"eval run '{run_id}' has no sample '{sample_id}' (epoch {epoch})")
    return {"run_id": run_id, "sample_id": sample_id, "epoch": epoch, "status": row["status"],
            "sample": json.loads(row["sample"]), "output": row["output"], "scores": json.loads(row["scores"]),
            "events": json.loads(row["events"]), "usage": json.loads(row["usage"]), "error": row["error"]}


def comparison(store: Store, run_a: str, run_b: str, alpha: float) -> dict[str, Any]:
    result = compare_runs(store, run_a, run_b, alpha=alpha)
    scorers = [_finite(dataclasses.asdict(s)) for s in result.scorers]
    return {"run_a": run_detail(store, run_a), "run_b": run_detail(store, run_b), "alpha": alpha, "scorers": scorers,
            "regressions": [s.scorer for s in result.regressions]}
