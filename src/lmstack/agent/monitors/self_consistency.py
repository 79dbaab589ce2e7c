"""Self-consistency (opt-in, costs k extra sampled calls): disagreement among sampled answers.
Answers are compared by the numbers they state when they state any, else by their normalised words."""

from __future__ import annotations

import re

from lmstack.agent.monitors.base import MonitorEvent, StepView
from lmstack.agent.monitors.grounding import NUMBER

MIN_AGREEMENT = 0.5


def answer_signature(text: str) -> tuple:
    numbers = [float(m.group().replace(",", "")) for m in NUMBER.finditer(text)]
    if numbers:
        return tuple(sorted(numbers))
    return tuple(sorted(set(re.findall(r"\w+", text.lower()))))


def check_self_consistency(step: StepView, min_agreement: float = MIN_AGREEMENT) -> list[MonitorEvent]:
    if not step.samples or not step.content.strip():
        return []
    own = answer_signature(step.content)
    agreeing = sum(answer_signature(s) == own for s in step.samples)
    agreement = agreeing / len(step.samples)
    if agreement >= min_agreement:
        return []
    return [MonitorEvent("self_consistency", 0, len(step.content), step.content,
                         f"only {agreeing} of {len(step.samples)} sampled answers agree with this one")]
