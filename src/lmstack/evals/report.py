"""One self-contained HTML report for one or more runs: score table with CIs, a comparison plot
(matplotlib PNG embedded as base64), and per-sample drill-down with the full transcript, scores,
errors and monitor events. Every piece of model, tool or dataset text is escaped.
"""

from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path
from typing import Any

from lmstack.atomic import atomic_write_text
from lmstack.evals.store import RunRecord, SampleRecord, Store
from lmstack.evals.summary import partial_note, summarized

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.err{color:#b00020}.ok{color:#116611}.bad{color:#b00020}
details{margin:2px 0}summary{cursor:pointer}pre{white-space:pre-wrap;background:#f8f8f8;padding:6px;margin:2px 0}
.event{border-left:3px solid #ccc;padding-left:8px;margin:4px 0}.monitor{border-left-color:#e69500}
.partial{color:#8a5a00;font-size:smaller}
"""


def render_report(store: Store, run_ids: list[str], max_samples: int = 500) -> str:
    runs = [summarized(store, store.run(r)) for r in run_ids]  # an unfinished run's scores so far, marked partial
    samples = {r.id: store.samples(r.id) for r in runs}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>lmstack eval report</title>"
             f"<style>{STYLE}</style></head><body><h1>lmstack eval report</h1>",
             _score_table(runs), _plot(runs)]
    for run in runs:
        parts.append(_run_section(run, samples[run.id], max_samples))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(store: Store, run_ids: list[str], path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, render_report(store, run_ids))
    return path


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else escape(str(value))


def _run_cell(run: RunRecord) -> str:
    note = partial_note(run.status, (run.summary or {}).get("partial"))
    return f"<td>{escape(run.id)}" + (f"<br><span class='partial'>{escape(note)}</span>" if note else "") + "</td>"


def _score_table(runs: list[RunRecord]) -> str:
    rows = ["<h2>Scores</h2><table><tr><th>run</th><th>task</th><th>model</th><th>scorer</th><th>reducer</th>"
            "<th>mean</th><th>95% CI</th><th>stderr</th><th>n</th><th>errors</th><th>tokens</th><th>cost $</th></tr>"]
    for run in runs:
        summary = run.summary or {"scores": {}, "usage": {}}
        usage = summary.get("usage", {})
        tokens = int(usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0))
        for scorer, by_reducer in summary["scores"].items():
            arrow = "" if summary.get("higher_is_better", {}).get(scorer, True) else " (lower is better)"
            # A failed sample has no score from any scorer; a scorer's own failures are its row's alone.
            scorer_errors = summary.get("scorer_errors_by_name", {}).get(scorer, 0)
            for reducer, s in by_reducer.items():
                rows.append(f"<tr>{_run_cell(run)}<td>{escape(run.task)}</td><td>{escape(run.model)}</td>"
                            f"<td>{escape(scorer)}{arrow}</td><td>{escape(reducer)}</td><td>{_fmt(s['mean'])}</td>"
                            f"<td>[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]</td><td>{_fmt(s['stderr'])}</td>"
                            f"<td>{s['n']}</td><td class='err'>{summary.get('errors', 0)} samples, "
                            f"{scorer_errors} scores</td><td>{tokens}</td>"
                            f"<td>{usage.get('cost_usd', 0.0):.4f}</td></tr>")
        if not summary["scores"]:
            rows.append(f"<tr>{_run_cell(run)}<td>{escape(run.task)}</td><td>{escape(run.model)}</td>"
                        f"<td colspan='9' class='err'>no scores ({escape(run.status)}, {summary.get('errors', 0)} "
                        f"sample errors)</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _plot(runs: list[RunRecord]) -> str:
    """One horizontal bar per (run, scorer) mean with its 95% CI; lower-is-better scorers in their own panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[bool, list[tuple[str, float, float, float, int]]] = {True: [], False: []}
    for index, run in enumerate(runs):
        summary = run.summary or {"scores": {}}
        for scorer, by_reducer in summary["scores"].items():
            s = by_reducer.get("mean")
            if s and s["mean"] is not None:
                higher = summary.get("higher_is_better", {}).get(scorer, True)
                low = s["ci_low"] if s["ci_low"] is not None else s["mean"]
                high = s["ci_high"] if s["ci_high"] is not None else s["mean"]
                partial = " (partial)" if summary.get("partial") else ""
                panels[higher].append((f"{run.task} / {scorer} / {run.model} [{run.id[-6:]}]{partial}", s["mean"], low,
                                       high, index))
    used = [(higher, rows) for higher, rows in panels.items() if rows]
    if not used:
        return ""
    heights = [max(1.0, 0.28 * len(rows)) for _, rows in used]
    fig, axes = plt.subplots(len(used), 1, figsize=(12, sum(heights) + 0.8 * len(used)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (higher, rows) in zip(axes[:, 0], used):
        ys = list(range(len(rows)))[::-1]
        ax.barh(ys, [r[1] for r in rows], xerr=[[r[1] - r[2] for r in rows], [r[3] - r[1] for r in rows]],
                color=[colors[r[4] % len(colors)] for r in rows], capsize=3)
        ax.set_yticks(ys, [r[0] for r in rows], fontsize=7)
        ax.set_xlabel("mean score, 95% CI " + ("(higher is better)" if higher else "(lower is better)"))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return f"<h2>Comparison</h2><img alt='scores' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def _run_section(run: RunRecord, records: list[SampleRecord], max_samples: int) -> str:
    env = escape(json.dumps(run.environment))
    config = escape(json.dumps(run.config))
    parts = [f"<h2>Run {escape(run.id)}: {escape(run.task)} on {escape(run.model)}</h2>",
             f"<p>status {escape(run.status)}; config <code>{config}</code>; code <code>{env}</code></p>"]
    errors = [r for r in records if r.status == "error"]
    if errors:
        parts.append(f"<h3 class='err'>Sample errors ({len(errors)})</h3><table><tr><th>sample</th><th>epoch</th>"
                     "<th>reason</th></tr>")
        parts += [f"<tr><td>{escape(r.sample_id)}</td><td>{r.epoch}</td><td class='err'>{escape(r.error or '')}</td></tr>"
                  for r in errors]
        parts.append("</table>")
    parts.append(f"<h3>Samples ({len(records)})</h3>")
    parts += [_sample_details(r) for r in records[:max_samples]]
    if len(records) > max_samples:
        parts.append(f"<p>... {len(records) - max_samples} more samples not shown</p>")
    return "\n".join(parts)


def _sample_details(record: SampleRecord) -> str:
    badges = []
    for name, score in record.scores.items():
        if score.get("error"):
            badges.append(f"<span class='err'>{escape(name)}: error</span>")
        else:
            css = "ok" if score.get("value") == 1.0 else "bad" if score.get("value") == 0.0 else ""
            badges.append(f"<span class='{css}'>{escape(name)}={_fmt(score.get('value'))}</span>")
    status = f"<span class='err'>ERROR: {escape(record.error or '')}</span>" if record.status == "error" else " ".join(badges)
    body = [f"<p><b>input</b></p><pre>{escape(_text(record.sample.get('input')))}</pre>",
            f"<p><b>target</b> <code>{escape(_text(record.sample.get('target')))}</code></p>",
            f"<p><b>output</b></p><pre>{escape(record.output or '')}</pre>"]
    for name, score in record.scores.items():
        detail = score.get("error") or score.get("explanation") or ""
        body.append(f"<p><b>{escape(name)}</b>: value {_fmt(score.get('value'))}, answer "
                    f"<code>{escape(str(score.get('answer')))}</code> {escape(str(detail))}</p>")
    body.append("<p><b>events</b></p>")
    body += [_event(e) for e in record.events]
    return (f"<details><summary>{escape(record.sample_id)} (epoch {record.epoch}) {status}</summary>"
            f"{''.join(body)}</details>")


def _event(event: dict[str, Any]) -> str:
    kind = event.get("kind", "event")
    css = "event monitor" if kind == "monitor" else "event"
    if kind == "model_call":
        transcript = "\n".join(f"[{m.get('role')}] {_text(m.get('content'))}" + (
            f" tool_calls={json.dumps(m['tool_calls'])}" if m.get("tool_calls") else "") for m in event.get("messages", []))
        reply = event.get("response", {})
        text = (f"{transcript}\n[assistant -> ] {_text(reply.get('content'))}"
                + (f" tool_calls={json.dumps(reply.get('tool_calls'))}" if reply.get("tool_calls") else "")
                + f"\n(cached={event.get('cached')}, usage={json.dumps(event.get('usage'))})")
    else:
        text = json.dumps({k: v for k, v in event.items() if k != "kind"}, indent=1, default=str)
    return f"<div class='{css}'><b>{escape(kind)}</b><pre>{escape(text)}</pre></div>"


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
