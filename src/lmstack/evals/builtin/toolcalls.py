"""`toolcalls`: the post-training synthetic tool-use task, held-out split, one sample per decision.

Every assistant turn of a held-out conversation is a sample: the messages before it, with the tool
schemas (or without, to measure the model unaided), and the data layer's own checker
(`score_turn`) as the scorer. Turns of one conversation share a group (clustered standard errors).
"""

from __future__ import annotations

import json
from typing import Any

from lmstack.data.toolcalls import TOOL_SCHEMAS, decision_points, generate as generate_conversations, score_turn
from lmstack.evals.sample import Sample, Score, TaskState
from lmstack.evals.solvers import generate
from lmstack.evals.task import Task, TaskConfig, scorer, task
from lmstack.tokenizer import parse_tool_call


def decision_samples(n: int, seed: int) -> list[Sample]:
    samples = []
    for conversation in generate_conversations(n, seed, "test"):
        for k, (messages, target) in enumerate(decision_points(conversation)):
            samples.append(Sample(id=f"{conversation['id']}/t{k}", input=messages, target=target,
                                  metadata={"kind": conversation["kind"]}, group=conversation["id"]))
    return samples


@scorer
def toolcall(field: str = "correct"):
    """The data layer's checker on the model's turn; `field`: correct, parsed or right_tool."""
    def score(state: TaskState, ctx: Any) -> Score:
        calls = [parse_tool_call(json.dumps({"name": c["name"], "arguments": _arguments(c["arguments"])}))
                 for c in state.tool_calls]
        verdict = score_turn(state.output, calls, state.sample.target)
        answer = json.dumps(state.tool_calls) if state.tool_calls else state.output
        return Score(1.0 if verdict[field] else 0.0, answer=answer, metadata=verdict)
    score.registry_name = "toolcall" if field == "correct" else f"toolcall_{field}"
    return score


def _arguments(raw: str) -> Any:
    """Arguments as the model wrote them; text that is not JSON stays text, which the checker rejects."""
    try:
        return json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        return raw


@task
def toolcalls(n: int = 20, seed: int = 0, tools: bool = True):
    """Synthetic tool use, held-out split: right tool, right arguments, right answer."""
    return Task(dataset=decision_samples(n, seed), solver=generate(tools=TOOL_SCHEMAS if tools else None),
                scorer=[toolcall("correct"), toolcall("parsed"), toolcall("right_tool")],
                config=TaskConfig(max_tokens=64), name="toolcalls" if tools else "toolcalls_no_tools")
