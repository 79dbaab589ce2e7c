"""`hallucination_detection`: the agent monitors scored on labelled agent steps.

The steps come from the agent layer's generator (grounded vs invented facts, honest vs false action
claims, valid vs hallucinated tool calls, consistent vs inconsistent samples). The solver runs every
monitor on the step and logs its events like an agent run would; per monitor, two scorers turn the
flags into precision and recall: `<monitor>_recall` scores only the steps labelled "should flag"
(1 = flagged), `<monitor>_precision` only the steps the monitor flagged (1 = label agrees); the others
are left out of that mean. No model is called: this measures the monitors themselves.
"""

from __future__ import annotations

from typing import Any

from lmstack.agent.monitor_data import generate_steps
from lmstack.agent.monitors import MONITORS
from lmstack.evals import arguments
from lmstack.evals.sample import Sample, Score, TaskState
from lmstack.evals.task import ArgumentError, Task, scorer, solver, task


@solver
def run_monitors(steps: dict[str, Any]):
    """Run every agent monitor on the labelled step with the sample's id; log the events."""
    def solve(state: TaskState, ctx: Any) -> TaskState:
        step = steps[state.sample.id]
        flagged = []
        for name, check in MONITORS.items():
            for event in check(step.view()):
                state.log("monitor", monitor=name, action="flag", start=event.start, end=event.end,
                          text=event.text, detail=event.detail, target=event.target)
                flagged.append(name)
        state.output = step.content
        state.metadata["flagged"] = sorted(set(flagged))
        return state
    return solve


@scorer
def monitor_detection(monitor: str, metric: str = "recall"):
    """Per-step share of a monitor's recall (over positives) or precision (over its flags)."""
    def score(state: TaskState, ctx: Any) -> Score:
        label = bool(state.sample.target[monitor])
        flagged = monitor in state.metadata["flagged"]
        counted = label if metric == "recall" else flagged
        value = (1.0 if (flagged if metric == "recall" else label) else 0.0) if counted else None
        return Score(value, answer="flagged" if flagged else "not flagged",
                     explanation=f"label: {'should flag' if label else 'should not flag'}")
    score.registry_name = f"{monitor}_{metric}"
    return score


@task
def hallucination_detection(seed: int = 1, monitors: list[str] | None = None):
    """Precision and recall of the agent's hallucination monitors on labelled steps."""
    steps = {step.id: step for step in generate_steps(seed)}
    # A monitor named twice is measured once: its scorers would share a name, which a run refuses.
    names = list(dict.fromkeys(arguments.strings(monitors, "monitors", list(MONITORS)) if monitors is not None else
                               ["grounding", "action_claims", "tool_hallucination"]))
    if not names:  # an empty list measured the default monitors, as if none had been given
        raise ArgumentError(f"monitors must name at least one of {list(MONITORS)}")
    dataset = [Sample(id=s.id, input=s.content, target=s.labels, metadata={"kind": s.kind}) for s in steps.values()]
    scorers = [monitor_detection(m, metric) for m in names for metric in ("precision", "recall")]
    return Task(dataset=dataset, solver=run_monitors(steps), scorer=scorers)
