"""Solvers: plain generation, chat with a system prompt and few-shot examples, multiple choice by
loglikelihood, and bits-per-byte of a text. (The agent solver is in `agent_solver.py`.)

A solver is `solve(state, ctx) -> state`; a task's solvers run in order, so `[system_message(...),
generate()]` composes. `ctx.model` is the evaluated model bound to this sample (cached and logged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lmstack.evals import arguments
from lmstack.evals.sample import TaskState
from lmstack.evals.task import TaskConfig, solver


@dataclass
class SolveContext:
    model: Any  # lmstack.evals.model.SampleModel
    judge: Any | None
    config: TaskConfig
    run_id: str = ""
    db_path: str | None = None  # the database of the eval run (the agent solver journals its runs there)


def _ensure_messages(state: TaskState) -> None:
    if not state.messages:
        sample_input = state.sample.input
        state.messages = [{"role": "user", "content": sample_input}] if isinstance(sample_input, str) else list(sample_input)


@solver
def system_message(content: str):
    """Put a system message first (replacing one the sample brought)."""
    arguments.text(content, "content")

    def solve(state: TaskState, ctx: SolveContext) -> TaskState:
        _ensure_messages(state)
        rest = [m for m in state.messages if m.get("role") != "system"]
        state.messages = [{"role": "system", "content": content}, *rest]
        return state
    return solve


@solver
def few_shot(examples: list[tuple[str, str]]):
    """Insert (question, answer) turns before the sample's first user message."""
    examples = arguments.pairs(examples, "examples")

    def solve(state: TaskState, ctx: SolveContext) -> TaskState:
        _ensure_messages(state)
        shots = [m for q, a in examples for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
        first_user = next((i for i, m in enumerate(state.messages) if m.get("role") == "user"), len(state.messages))
        state.messages = state.messages[:first_user] + shots + state.messages[first_user:]
        return state
    return solve


@solver
def generate(max_tokens: int | None = None, temperature: float | None = None, tools: list[dict] | None = None):
    """One model call on the conversation so far; its text becomes the output."""
    if max_tokens is not None:
        max_tokens = arguments.number(max_tokens, "max_tokens", 1, integer=True)
    if temperature is not None:
        temperature = arguments.number(temperature, "temperature")

    def solve(state: TaskState, ctx: SolveContext) -> TaskState:
        _ensure_messages(state)
        response = ctx.model.complete(
            state.messages, tools,
            temperature=ctx.config.temperature if temperature is None else temperature,
            max_tokens=max_tokens or ctx.config.max_tokens)
        state.messages.append(response.assistant_message())
        state.output = response.text
        state.tool_calls = [{"name": c.name, "arguments": c.arguments} for c in response.tool_calls]
        return state
    return solve


@solver
def chat(system: str | None = None, examples: list[tuple[str, str]] | None = None, max_tokens: int | None = None):
    """Chat with an optional system prompt and few-shot examples, then generate."""
    steps = [system_message(system)] if system else []
    if examples is not None:  # checked whenever given: an empty string is a mistake, not "no examples"
        steps.append(few_shot(examples))
    steps.append(generate(max_tokens))

    def solve(state: TaskState, ctx: SolveContext) -> TaskState:
        for step in steps:
            state = step(state, ctx)
        return state
    return solve


def continuation_logprob(tokens: list, context: str) -> tuple[float, int]:
    """Sum of logprobs of the tokens that start at or after `len(context)`, and how many there are."""
    scored = [t for t in tokens if t.offset >= len(context)]
    if any(t.logprob is None for t in scored):
        raise ValueError("the endpoint returned no logprob for a continuation token")
    return sum(t.logprob for t in scored), len(scored)


@solver
def multiple_choice(template: str = "{question}\nAnswer:", separator: str = " "):
    """Pick the choice whose text is most likely after the question (lm-eval's loglikelihood method).

    The output is the chosen choice's text; `metadata['choice_logprobs']` holds every choice's summed
    logprob and `metadata['choice_index']` / `['choice_index_norm']` the argmax, raw and per byte.
    """
    arguments.template(template, "template", ["question"])
    arguments.text(separator, "separator")

    def solve(state: TaskState, ctx: SolveContext) -> TaskState:
        choices = state.sample.choices
        if not choices:
            raise ValueError(f"sample {state.sample.id} has no 'choices'; multiple_choice needs them")
        context = template.format(question=state.sample.input_text())
        scores = []
        for choice in choices:
            tokens = ctx.model.prompt_logprobs(context + separator + choice)
            logprob, _ = continuation_logprob(tokens, context)
            scores.append(logprob)
        per_byte = [s / max(1, len((separator + c).encode())) for s, c in zip(scores, choices)]
        best = max(range(len(choices)), key=scores.__getitem__)
        state.metadata.update(choice_logprobs=scores, choice_index=best,
                              choice_index_norm=max(range(len(choices)), key=per_byte.__getitem__))
        state.output = choices[best]
        return state
    return solve


@solver
def bits_per_byte():
    """Score the sample's text under the model: `metadata['bits']`, `['bytes']`, output = bits/byte."""
    def solve(state: TaskState, ctx: SolveContext) -> TaskState:
        text = state.sample.input_text()
        tokens = ctx.model.prompt_logprobs(text)  # from the first scored token on
        if not tokens:
            raise ValueError(f"sample {state.sample.id}: the text is too short to score")
        logprob, _ = continuation_logprob(tokens, "")  # every token; a missing logprob raises
        bits = -logprob / math.log(2)
        n_bytes = len(text[tokens[0].offset:].encode())
        state.metadata.update(bits=bits, bytes=n_bytes, tokens=len(tokens))
        state.output = f"{bits / n_bytes:.6f}"
        return state
    return solve
