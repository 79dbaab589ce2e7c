"""Read-side views of eval runs for the dashboard: paged runs and samples, one sample's transcript,
and a comparison of two runs (the eval layer's paired tests) as JSON.

`Store.samples` loads a run's samples whole, events included; the sample list here uses `Store.samples_page`,
which reads only the light columns a page at a time, and one sample's transcript is fetched when it is opened.
A run that has not finished shows the scores of its samples so far, marked partial (`summary.partial`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lmstack.evals.compare import compare_runs
from lmstack.evals.store import Store
from lmstack.evals.summary import finite, summarized  # finite: NaN -> None, as JSON has no NaN


def runs_page(store: Store, offset: int, limit: int) -> dict[str, Any]:
    total, runs = store.runs_page(offset, limit)
    return {"total": total, "offset": offset, "runs": [dataclasses.asdict(summarized(store, r)) for r in runs]}


def run_detail(store: Store, run_id: str) -> dict[str, Any]:
    return dataclasses.asdict(summarized(store, store.run(run_id)))


def samples_page(store: Store, run_id: str, offset: int, limit: int) -> dict[str, Any]:
    total, samples = store.samples_page(run_id, offset, limit)
    return {"total": total, "offset": offset, "samples": samples}


def sample_detail(store: Store, run_id: str, sample_id: str, epoch: int) -> dict[str, Any]:
    # vars, not asdict: the record's fields were just parsed from JSON, a deep copy would only cost time.
    return {"run_id": run_id} | vars(store.sample(run_id, sample_id, epoch))


def comparison(store: Store, run_a: str, run_b: str, alpha: float) -> dict[str, Any]:
    result = compare_runs(store, run_a, run_b, alpha=alpha)
    scorers = [finite(dataclasses.asdict(s)) for s in result.scorers]
    return {"run_a": run_detail(store, run_a), "run_b": run_detail(store, run_b), "alpha": alpha, "scorers": scorers,
            "regressions": [s.scorer for s in result.regressions]}
