"""Tool hallucination: calls to tools that do not exist, or with argument fields the tool does not have.
The span is inside the call's raw arguments text (the invented field's quoted name), or the whole
arguments text for an unknown tool."""

from __future__ import annotations

import json
import re

from lmstack.agent.monitors.base import MonitorEvent, StepView


def check_tool_hallucination(step: StepView) -> list[MonitorEvent]:
    events = []
    for call in step.tool_calls:
        target = f"tool_call:{call.id}"
        if call.name not in step.tool_fields:
            events.append(MonitorEvent("tool_hallucination", 0, len(call.arguments), call.name,
                                       f"no tool named '{call.name}' exists", target))
            continue
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            continue  # malformed JSON is the validator's job; the model gets that message
        if not isinstance(arguments, dict):
            continue
        for name in sorted(set(arguments) - step.tool_fields[call.name]):
            found = re.search(rf'"{re.escape(name)}"', call.arguments)
            start, end = (found.start() + 1, found.end() - 1) if found else (0, len(call.arguments))
            events.append(MonitorEvent("tool_hallucination", start, end, name,
                                       f"'{call.name}' has no argument '{name}' (it has: "
                                       f"{', '.join(sorted(step.tool_fields[call.name])) or 'none'})", target))
    return events
