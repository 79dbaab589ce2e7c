"""A run's score table from its stored samples: epochs reduced per sample, then mean / SE / CI.

Reducers turn one sample's scores over epochs into one value: `mean`, `max`, `pass@K` (at least one of
K attempts right, unbiased estimator) and `pass^K` (all K right: reliability). Scorer errors are
left out of the means and counted.

A run that has not finished (running, interrupted, failed) has no stored table; `summarized` gives it the table of
the samples stored so far, marked partial, as Inspect shows the scores of the samples done.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, replace
from typing import Any

from lmstack.errors import LmstackError
from lmstack.evals import stats
from lmstack.evals.store import RunRecord, SampleRecord, Store
from lmstack.evals.table import column_widths, table_row
from lmstack.evals.task import TaskConfig

REDUCER = re.compile(r"^(mean|max|pass@(\d+)|pass\^(\d+))$")


class ReducerError(LmstackError):
    """An unknown reducer name, or one that needs more epochs than the run has."""


def check_reducer(name: str, epochs: int) -> None:
    match = REDUCER.match(name)
    if not match:
        raise ReducerError(f"unknown reducer '{name}'; use mean, max, pass@K or pass^K (e.g. pass@5)")
    k = int(match.group(2) or match.group(3) or 1)
    if k < 1:
        raise ReducerError(f"reducer '{name}' counts no attempts; use a K of at least 1 (e.g. pass@1)")
    if k > epochs:
        raise ReducerError(f"reducer '{name}' needs at least {k} epochs; run with --epochs {k} or more")


def reduce(name: str, values: list[float]) -> float:
    if name == "mean":
        return sum(values) / len(values)
    if name == "max":
        return max(values)
    match = REDUCER.match(name)
    correct = sum(1 for v in values if v >= 1.0)
    if match.group(2):
        return stats.pass_at_k(len(values), correct, int(match.group(2)))
    return stats.pass_hat_k(len(values), correct, int(match.group(3)))


def per_sample(records: list[SampleRecord], scorer: str, reducer: str = "mean") -> dict[str, tuple[float, str]]:
    """sample id -> (reduced value, group), over the samples whose every epoch has a valid score."""
    values: dict[str, list[float]] = defaultdict(list)
    groups: dict[str, str] = {}
    broken: set[str] = set()
    for r in records:
        score = r.scores.get(scorer)
        if r.status != "done" or score is None or score.get("error") or score.get("value") is None:
            broken.add(r.sample_id)
            continue
        values[r.sample_id].append(float(score["value"]))
        groups[r.sample_id] = r.group
    # Sorted by id: the bootstrap then sees the same order whatever order the samples finished in.
    return {sid: (reduce(reducer, values[sid]), groups[sid]) for sid in sorted(values) if sid not in broken}


def summarize_run(records: list[SampleRecord], reducers: list[str], higher_is_better: dict[str, bool],
                  n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    scorers = sorted({name for r in records for name in r.scores})
    table: dict[str, dict[str, Any]] = {}
    for scorer in scorers:
        table[scorer] = {}
        binary = all(s.get("value") in (0, 1, 0.0, 1.0) for r in records
                     for s in [r.scores.get(scorer)] if s and s.get("error") is None and s.get("value") is not None)
        for reducer in reducers:
            if reducer.startswith("pass") and not binary:
                continue
            values = per_sample(records, scorer, reducer)
            summary = stats.summarize([v for v, _ in values.values()], [g for _, g in values.values()],
                                      n_boot=n_boot, seed=seed)
            table[scorer][reducer] = finite(asdict(summary))
    usage: dict[str, float] = defaultdict(float)
    for r in records:
        for k, v in r.usage.items():
            usage[k] += v
    return {
        "scores": table,
        "higher_is_better": {s: higher_is_better.get(s, True) for s in scorers},
        "samples": len({r.sample_id for r in records}),
        "results": len(records),
        "errors": sum(1 for r in records if r.status == "error"),
        "scorer_errors": sum(1 for r in records for s in r.scores.values() if s.get("error")),
        "scorer_errors_by_name": {s: sum(1 for r in records if (r.scores.get(s) or {}).get("error")) for s in scorers},
        "usage": dict(usage),
    }


def summarized(store: Store, run: RunRecord) -> RunRecord:
    """The run with its score table: the one it finished with, else (running, interrupted, failed, or resumed and not
    yet finished again) the table of its samples stored so far, with `partial` saying how many of how many."""
    if run.status == "finished":
        return run
    config = TaskConfig(**run.config.get("task", {}))
    whole, partial = progress(store, run)
    summary = summarize_run(whole, config.reducers, run.config.get("higher_is_better", {}), seed=config.seed)
    return replace(run, summary={**summary, "partial": partial})


def progress(store: Store, run: RunRecord) -> tuple[list[SampleRecord], dict[str, Any]]:
    """An unfinished run's results of the samples with every epoch stored (a reducer over fewer epochs would be
    another measure: pass@K needs K), and how many samples those are of how many; without scoring them (`eval list`
    shows only the count, and a summary bootstraps its intervals)."""
    records = store.samples(run.id, transcripts=False)
    epochs = TaskConfig(**run.config.get("task", {})).epochs
    epochs_stored = Counter(r.sample_id for r in records)
    whole = [r for r in records if epochs_stored[r.sample_id] >= epochs]
    return whole, {"done": len({r.sample_id for r in whole}), "planned": run.config.get("planned_samples")}


def partial_note(status: str, partial: dict[str, Any] | None) -> str | None:
    """`partial: 37/100 samples, interrupted` for a run that has not finished (its `progress`); None for one that has."""
    if partial is None:
        return None
    planned = "" if partial["planned"] is None else f"/{partial['planned']}"  # a run recorded before it was kept
    return f"partial: {partial['done']}{planned} samples, {status}"


def finite(d: dict[str, Any]) -> dict[str, Any]:
    """NaN (an empty score list) stored as None: JSON has no NaN."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


SCORE_COLUMNS = ("run", "task", "model", "scorer", "reducer", "mean", "95% CI", "n", "err", "tokens", "cost $")


def format_scores(runs: list[Any]) -> str:
    """The score table printed at the end of `lmstack eval run` (and by the demo). A row's `err` counts the results
    its scorer has no score for: the failed samples, and the samples on which that scorer failed."""
    lines: list[list[str] | str] = []  # a row of cells, or a run's one-line note, in run order
    for run in runs:
        summary = run.summary or {"scores": {}, "usage": {}}
        usage = summary.get("usage", {})
        tokens = str(int(usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)))
        cost = f"{usage.get('cost_usd', 0.0):.4f}"
        for scorer, by_reducer in summary["scores"].items():
            errors = summary.get("errors", 0) + summary.get("scorer_errors_by_name", {}).get(scorer, 0)
            lower = not summary.get("higher_is_better", {}).get(scorer, True)
            for reducer, s in by_reducer.items():
                mean = "-" if s["mean"] is None else f"{s['mean']:.4f}"
                ci = "-" if s["ci_low"] is None else f"[{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
                lines.append([run.id, run.task, run.model, scorer + (" (lower is better)" if lower else ""),
                              reducer, mean, ci, str(s["n"]), str(errors), tokens, cost])
        if not summary["scores"]:
            lines.append(f"{run.id} {run.task} {run.model} (no scores: {summary.get('errors', 0)} sample errors)")
    widths = column_widths(SCORE_COLUMNS, [line for line in lines if isinstance(line, list)])
    text = {"run", "task", "model", "scorer", "reducer"}
    return "\n".join([table_row(SCORE_COLUMNS, list(SCORE_COLUMNS), widths, text),
                      *(table_row(SCORE_COLUMNS, line, widths, text) if isinstance(line, list) else line
                        for line in lines)])
