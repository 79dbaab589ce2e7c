"""A sample (id, input, target, metadata) and the outcome records of solving and scoring it.

`Sample.input` is a prompt string or a list of OpenAI-format chat messages. A dataset row that cannot
become a proper sample (no input, say) still becomes a Sample with `error` set: the runner reports it
per sample with that reason instead of stopping the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    id: str
    input: str | list[dict[str, Any]]
    target: Any = None  # a string, a list of acceptable strings, a number, a dict: whatever the scorer reads
    choices: list[str] | None = None  # for multiple choice
    metadata: dict[str, Any] = field(default_factory=dict)
    group: str | None = None  # samples sharing a group are clustered in standard errors
    error: str | None = None  # why this row is not a valid sample (reported, never raised)

    @property
    def targets(self) -> list[str]:
        """The target as a list of acceptable strings."""
        if self.target is None:
            return []
        if isinstance(self.target, (list, tuple)):
            return [str(t) for t in self.target]
        return [str(self.target)]

    def input_text(self) -> str:
        """The input as one string (the last user message for chat input)."""
        if isinstance(self.input, str):
            return self.input
        users = [m.get("content") or "" for m in self.input if m.get("role") == "user"]
        return str(users[-1]) if users else ""


@dataclass
class Score:
    value: float | None  # 1.0 / 0.0 for binary scorers; None when the scorer failed
    answer: str | None = None  # what the scorer extracted from the output
    explanation: str | None = None  # e.g. a judge's raw verdict, a failing test's output
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the scorer raised: the value is not meaningful

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "answer": self.answer, "explanation": self.explanation,
                "metadata": self.metadata, "error": self.error}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Score":
        return cls(**data)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0  # model calls that reached the endpoint
    cached_calls: int = 0  # model calls answered from the response cache

    def add(self, other: "Usage") -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_usd += other.cost_usd
        self.calls += other.calls
        self.cached_calls += other.cached_calls

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": self.cost_usd, "calls": self.calls, "cached_calls": self.cached_calls}


@dataclass
class TaskState:
    """What a solver chain works on for one (sample, epoch), and what the scorers read."""
    sample: Sample
    epoch: int
    seed: int
    messages: list[dict[str, Any]] = field(default_factory=list)
    output: str = ""  # the final model output the scorers judge
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # every model call, tool call, monitor event
    usage: Usage = field(default_factory=Usage)
    metadata: dict[str, Any] = field(default_factory=dict)  # solver results, e.g. choice logprobs, bits

    def log(self, kind: str, **data: Any) -> None:
        self.events.append({"kind": kind, **data})
