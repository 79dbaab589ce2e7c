"""Paired comparison of two runs over the samples they share.

Binary scores get McNemar's exact test; continuous ones a paired sign-flip test of the mean difference, with a
bootstrap CI of it (both clustered by group; the test is named 'paired_bootstrap' in outputs, as before). A *regression* is a drop in the direction that matters (`higher_is_better`)
that is significant at `alpha`; only regressions fail a CI gate, so seed noise does not.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from lmstack.errors import LmstackError
from lmstack.evals import stats
from lmstack.evals.store import RunRecord, SampleRecord, Store
from lmstack.evals.summary import per_sample
from lmstack.evals.table import column_widths, table_row


class CompareError(LmstackError):
    """Two runs that cannot be compared (no shared scorer or no shared samples)."""


@dataclass
class ScorerComparison:
    scorer: str
    test: str  # 'mcnemar' | 'paired_bootstrap'
    n: int  # samples scored in both runs
    n_a: int  # samples run A scored (errors and samples B lacks are not compared)
    n_b: int
    mean_a: float
    mean_b: float
    diff: float  # mean_b - mean_a
    p_value: float
    ci_low: float | None  # of the difference (paired bootstrap only)
    ci_high: float | None
    higher_is_better: bool
    regression: bool
    improvement: bool
    flips: list[dict[str, Any]] = field(default_factory=list)  # samples whose outcome changed


@dataclass
class Comparison:
    run_a: RunRecord
    run_b: RunRecord
    alpha: float
    scorers: list[ScorerComparison]

    @property
    def regressions(self) -> list[ScorerComparison]:
        return [s for s in self.scorers if s.regression]


def compare_runs(store: Store, run_a: str, run_b: str, alpha: float = 0.05, seed: int = 0) -> Comparison:
    a, b = store.run(run_a), store.run(run_b)
    records_a, records_b = store.samples(run_a), store.samples(run_b)
    shared = sorted(set(a.config.get("scorers", [])) & set(b.config.get("scorers", [])))
    if not shared:
        raise CompareError(f"runs '{run_a}' and '{run_b}' share no scorer; compare runs of the same task")
    _check_same_samples(run_a, records_a, run_b, records_b)
    out = []
    for scorer in shared:
        values_a, values_b = per_sample(records_a, scorer), per_sample(records_b, scorer)
        ids = sorted(set(values_a) & set(values_b))
        if not ids:
            raise CompareError(f"runs '{run_a}' and '{run_b}' have no sample scored by '{scorer}' in both")
        higher = a.config.get("higher_is_better", {}).get(scorer, True)
        out.append(_compare_scorer(scorer, ids, values_a, values_b, higher, alpha, seed))
    return Comparison(a, b, alpha, out)


def _check_same_samples(run_a: str, records_a: list[SampleRecord], run_b: str, records_b: list[SampleRecord]) -> None:
    """Pairing by id is only sound when an id names the same sample in both runs: unrelated datasets
    (rows numbered by line, say) share ids but not questions, and their "paired" test would be noise."""
    def content(records: list[SampleRecord]) -> dict[str, str]:
        return {r.sample_id: json.dumps([r.sample.get("input"), r.sample.get("target")], sort_keys=True, default=str)
                for r in records}

    in_a, in_b = content(records_a), content(records_b)
    differ = sorted(i for i in set(in_a) & set(in_b) if in_a[i] != in_b[i])
    if differ:
        raise CompareError(f"sample '{differ[0]}' (and {len(differ) - 1} more) has a different input or target in "
                           f"run '{run_a}' than in run '{run_b}': the runs evaluated different datasets, so their "
                           "samples cannot be paired; compare runs of the same task and dataset version")


def _compare_scorer(scorer: str, ids: list[str], values_a: dict, values_b: dict, higher: bool,
                    alpha: float, seed: int) -> ScorerComparison:
    xa = [values_a[i][0] for i in ids]
    xb = [values_b[i][0] for i in ids]
    groups = [values_a[i][1] for i in ids]
    binary = all(v in (0.0, 1.0) for v in xa + xb)
    if binary:
        test = stats.mcnemar([v == 1.0 for v in xa], [v == 1.0 for v in xb])
        p_value, low, high, name = test.p_value, None, None, "mcnemar"
    else:
        test = stats.paired_bootstrap(xa, xb, stats.clusters_to_use(groups), seed=seed)
        p_value, low, high, name = test.p_value, test.ci_low, test.ci_high, "paired_bootstrap"
    mean_a, mean_b = sum(xa) / len(xa), sum(xb) / len(xb)
    diff = mean_b - mean_a
    worse = diff < 0 if higher else diff > 0
    significant = p_value < alpha and diff != 0
    flips = sorted(({"sample_id": i, "a": va, "b": vb} for i, va, vb in zip(ids, xa, xb) if va != vb),
                   key=lambda flip: natural_key(flip["sample_id"]))  # q2 before q10
    low, high = (None, None) if low is None or math.isnan(low) else (low, high)  # one pair has no interval
    return ScorerComparison(scorer, name, len(ids), len(values_a), len(values_b), mean_a, mean_b, diff, p_value,
                            low, high, higher,
                            regression=significant and worse, improvement=significant and not worse, flips=flips)


def natural_key(text: str) -> list:
    """Digits compared as numbers: 'q2' < 'q10'."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)]


COLUMNS = ("scorer", "n", "A", "B", "B-A", "p", "test", "verdict")
TEXT_COLUMNS = {"scorer", "test", "verdict"}  # left-aligned; numbers are right-aligned


def format_comparison(comparison: Comparison, max_flips: int = 20) -> str:
    cells = {s.scorer: [s.scorer, str(s.n), f"{s.mean_a:.4f}", f"{s.mean_b:.4f}", f"{s.diff:+.4f}", f"{s.p_value:.4f}",
                        s.test, _verdict(s)] for s in comparison.scorers}
    widths = column_widths(COLUMNS, list(cells.values()))
    lines = [f"{label} = {run.id} ({run.task} on {run.model})" + ("" if run.status == "finished" else f": {run.status}")
             for label, run in (("A", comparison.run_a), ("B", comparison.run_b))]
    lines.append(table_row(COLUMNS, list(COLUMNS), widths, TEXT_COLUMNS))
    for s in comparison.scorers:
        lines.append(table_row(COLUMNS, cells[s.scorer], widths, TEXT_COLUMNS))
        if s.n < max(s.n_a, s.n_b):
            lines.append(f"    compared on the {s.n} samples scored in both runs (A scored {s.n_a}, B {s.n_b})")
        for flip in s.flips[:max_flips]:
            lines.append(f"    flip {flip['sample_id']}: {flip['a']:g} -> {flip['b']:g}")
        if len(s.flips) > max_flips:
            lines.append(f"    ... and {len(s.flips) - max_flips} more flips")
    return "\n".join(lines)


def _verdict(s: ScorerComparison) -> str:
    return "REGRESSION" if s.regression else "improvement" if s.improvement else "no significant change"
