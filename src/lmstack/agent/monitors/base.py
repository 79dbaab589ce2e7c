"""What every monitor sees (`StepView`) and reports (`MonitorEvent`).

Monitors are pure functions of the step, so a resumed run that replays a step records the same
events. Each event carries the exact character span [start, end) in the text it flags: the
assistant message's content, or, for tool-call problems, the call's raw arguments text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmstack.agent.client import TokenLogprob, ToolCall


@dataclass(slots=True)
class MonitorEvent:
    monitor: str
    start: int
    end: int
    text: str
    detail: str
    target: str = "content"  # "content" or "tool_call:<id>" (span is inside that call's arguments)


@dataclass(slots=True)
class PastCall:
    name: str
    arguments: dict[str, Any]
    ok: bool


@dataclass
class StepView:
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    evidence: list[str] = field(default_factory=list)  # user messages, tool outputs, memories, system prompt
    past_calls: list[PastCall] = field(default_factory=list)  # successful or not, this run so far
    tool_fields: dict[str, set[str]] = field(default_factory=dict)  # tool name -> argument names
    tool_actions: dict[str, tuple[str, ...]] = field(default_factory=dict)  # tool name -> action verbs
    samples: list[str] = field(default_factory=list)  # extra sampled answers, for self-consistency
