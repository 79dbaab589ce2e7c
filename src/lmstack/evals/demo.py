"""The demo's last stage: evaluate the demo model with and without tools on the built-in tasks,
print the score table and write one HTML report (budget: about 2 minutes on 2 CPU cores).

Runs in-process on the engine (no server needed), with small sample counts sized for the budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmstack.evals.clients import make_client
from lmstack.evals.loader import load_task
from lmstack.evals.model import CachedModel
from lmstack.evals.report import write_report
from lmstack.evals.runner import run_eval
from lmstack.evals.store import Store
from lmstack.evals.summary import format_scores

# (task, task arguments): each tool-using task is paired with its no-tools twin.
DEMO_TASKS: list[tuple[str, dict[str, Any]]] = [
    ("val_bpb", {"n": 64}),
    ("toolcalls", {"n": 20, "tools": True}),
    ("toolcalls", {"n": 20, "tools": False}),
    ("arithmetic_agent", {"n": 20, "tools": True, "max_steps": 3}),
    ("arithmetic_agent", {"n": 20, "tools": False}),
    ("hallucination_detection", {}),
]


def evaluate_demo_model(checkpoint: str | Path, report_path: str | Path, db_path: str | Path | None = None,
                        concurrency: int = 8) -> tuple[list[str], Path]:
    """Run the demo tasks on `checkpoint`; returns the run ids and the report's path."""
    store = Store(db_path)
    model = CachedModel(make_client(str(checkpoint)), store, max_concurrency=concurrency)
    run_ids = []
    for name, task_args in DEMO_TASKS:
        outcome = run_eval(load_task(name, task_args), model, store, max_workers=concurrency)
        run_ids.append(outcome.run_id)
    runs = [store.run(r) for r in run_ids]
    print(format_scores(runs))
    return run_ids, write_report(store, run_ids, report_path)


def stage_evals(qs: Any) -> None:
    """Quickstart stage: the fine-tuned model when there is one, else the pretrained one."""
    checkpoint = next((where for what, where in qs.outputs if what == "SFT model"), None) or qs.pretrain.last_checkpoint
    _, report = evaluate_demo_model(checkpoint, qs.run_dir / "eval-report.html")
    print(f"eval report: {report}")
    qs.outputs.append(("eval report", report))
