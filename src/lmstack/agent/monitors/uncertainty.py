"""Uncertainty: low token logprob or high entropy on the claims in a message (numbers, quotes,
entities, action claims), when the client returned logprobs. A model that is guessing a number
usually shows it in the distribution over the number's tokens."""

from __future__ import annotations

from lmstack.agent.monitors.action_claims import check_action_claims
from lmstack.agent.monitors.base import MonitorEvent, StepView
from lmstack.agent.monitors.grounding import claims

MIN_LOGPROB = -2.5  # below this the chosen token had < 8% probability
MAX_ENTROPY = 1.5  # nats over the top-k alternatives


def token_offsets(step: StepView) -> list[tuple[int, int, float, float]] | None:
    """(start, end, logprob, entropy) per token; None when the tokens do not spell the content
    (a trailing stop token some servers include, like <|end|>, is allowed)."""
    if not step.logprobs:
        return None
    offsets, position = [], 0
    for entry in step.logprobs:
        offsets.append((position, position + len(entry.token), entry.logprob, entry.entropy))
        position += len(entry.token)
    return offsets if "".join(e.token for e in step.logprobs).startswith(step.content) else None


def check_uncertainty(step: StepView, min_logprob: float = MIN_LOGPROB, max_entropy: float = MAX_ENTROPY
                      ) -> list[MonitorEvent]:
    offsets = token_offsets(step)
    if offsets is None:
        return []
    spans = [(start, end, text) for _, start, end, text in claims(step.content)]
    spans += [(e.start, e.end, e.text) for e in check_action_claims(StepView(step.content))]
    events = []
    for start, end, text in spans:
        covering = [(lp, ent) for a, b, lp, ent in offsets if a < end and b > start]
        if not covering:
            continue
        lowest = min(lp for lp, _ in covering)
        widest = max(ent for _, ent in covering)
        if lowest < min_logprob or widest > max_entropy:
            events.append(MonitorEvent("uncertainty", start, end, text,
                                       f"min token logprob {lowest:.2f}, max entropy {widest:.2f} nats"))
    return events
