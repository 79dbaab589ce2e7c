"""Monitors run after every step; each returns `MonitorEvent`s with exact character spans.

`MONITORS` maps a monitor's name (as used in `monitors.<name>` config keys) to its check function.
"""

from lmstack.agent.monitors.action_claims import check_action_claims
from lmstack.agent.monitors.base import MonitorEvent, PastCall, StepView
from lmstack.agent.monitors.grounding import check_grounding
from lmstack.agent.monitors.self_consistency import check_self_consistency
from lmstack.agent.monitors.tool_hallucination import check_tool_hallucination
from lmstack.agent.monitors.uncertainty import check_uncertainty

MONITORS = {
    "grounding": check_grounding,
    "action_claims": check_action_claims,
    "uncertainty": check_uncertainty,
    "tool_hallucination": check_tool_hallucination,
    "self_consistency": check_self_consistency,
}

__all__ = ["MONITORS", "MonitorEvent", "PastCall", "StepView"]
