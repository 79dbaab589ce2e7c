"""Scorers that need more than the output text: unit tests in the agent layer's sandbox, a judge
model with a rubric, and hallucination from the agent monitors' events."""

from __future__ import annotations

import re
from typing import Any

from lmstack.agent.sandbox import SandboxLimits, run_python
from lmstack.evals import arguments
from lmstack.evals.sample import Score, TaskState
from lmstack.evals.task import scorer

CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    """The last fenced code block, or the whole text when there is none."""
    blocks = CODE_BLOCK.findall(text)
    return blocks[-1] if blocks else text


@scorer
def unit_tests(tests_field: str = "tests", cpu_s: int = 10, wall_s: float = 20.0):
    """The output's code, followed by the sample's tests (`metadata[tests_field]`, or the target), exits 0
    in the sandbox (no network, CPU/memory/process limits, scratch-only writes)."""
    arguments.text(tests_field, "tests_field")
    cpu_s = arguments.number(cpu_s, "cpu_s", 1, integer=True)
    wall_s = arguments.number(wall_s, "wall_s", above=True)

    def score(state: TaskState, ctx: Any) -> Score:
        tests = state.sample.metadata.get(tests_field) or state.sample.target
        if not tests:
            raise ValueError(f"sample {state.sample.id} has no tests (metadata '{tests_field}' or target)")
        program = f"{extract_code(state.output)}\n\n{tests}\n"
        result = run_python(program, SandboxLimits(cpu_s=cpu_s, wall_s=wall_s))
        state.log("sandbox", exit_code=result.exit_code, killed_by=result.killed_by, isolation=result.isolation,
                  stdout=result.stdout[-2000:], stderr=result.stderr[-2000:], wall_s=result.wall_s)
        return Score(1.0 if result.ok else 0.0, answer=f"exit {result.exit_code}",
                     explanation=None if result.ok else result.report()[-2000:],
                     metadata={"isolation": result.isolation})
    return score


JUDGE_TEMPLATE = """You are grading an answer against a rubric.

[Question]
{question}

[Reference answer]
{target}

[Answer to grade]
{output}

[Rubric]
{rubric}

Reply with your reasoning, then a last line exactly "GRADE: C" if the answer is correct or "GRADE: I" if it is not."""

GRADE = re.compile(r"GRADE:\s*([CI])\b")


@scorer
def model_graded(rubric: str = "The answer is factually consistent with the reference answer.",
                 template: str = JUDGE_TEMPLATE, max_tokens: int | None = None):
    """A judge model (`--judge`) grades the output; its raw verdict is kept as the explanation. Like a
    solver's generation, the judge's reply has no length limit unless `max_tokens` sets one (the endpoint's
    default applies): a fixed limit cut off reasoning before its GRADE line."""
    arguments.text(rubric, "rubric")
    arguments.template(template, "template", ["question", "target", "output", "rubric"])
    if max_tokens is not None:
        max_tokens = arguments.number(max_tokens, "max_tokens", 1, integer=True)

    def score(state: TaskState, ctx: Any) -> Score:
        if ctx.judge is None:
            raise ValueError("model_graded needs a judge model: pass --judge URL_OR_CHECKPOINT")
        prompt = template.format(question=state.sample.input_text(), target=", ".join(state.sample.targets),
                                 output=state.output, rubric=rubric)
        verdict = ctx.judge.complete([{"role": "user", "content": prompt}], temperature=0.0,
                                     max_tokens=max_tokens).text
        grades = GRADE.findall(verdict)
        if not grades:
            return Score(0.0, answer=None, explanation=verdict, metadata={"parsed": False})
        return Score(1.0 if grades[-1] == "C" else 0.0, answer=grades[-1], explanation=verdict,
                     metadata={"parsed": True})
    score.needs_judge = True  # `eval run` refuses the task without --judge, before recording a run
    return score


@scorer
def hallucination(monitors: list[str] | None = None):
    """1.0 if an agent monitor flagged the sample (lower is better); the flagged spans are kept."""
    known = ["grounding", "action_claims", "uncertainty", "tool_hallucination", "self_consistency"]
    wanted = set(arguments.strings(monitors, "monitors", known) if monitors else known)

    def score(state: TaskState, ctx: Any) -> Score:
        events = [e for e in state.events if e["kind"] == "monitor" and e["monitor"] in wanted]
        explanation = "; ".join(f"{e['monitor']}: {e['text']!r} ({e['detail']})" for e in events) or None
        counts: dict[str, int] = {}
        for e in events:
            counts[e["monitor"]] = counts.get(e["monitor"], 0) + 1
        return Score(1.0 if events else 0.0, answer=f"{len(events)} flags", explanation=explanation,
                     metadata={"flags": counts})
    score.higher_is_better = False
    return score
