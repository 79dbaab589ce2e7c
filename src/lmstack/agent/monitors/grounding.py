"""Grounding: numbers, quoted strings and named entities in the assistant's message that appear in
no tool output, user message, memory or system prompt are flagged as ungrounded claims.

Matching is lenient where writing varies and strict where facts differ: "1,234,567" matches
1234567, "3.1" matches 3.14159 (the claim's rounding), "$12.50" matches 12.5; an entity matches
case-insensitively as a whole phrase. Single-digit integers are not claims (list counts, "step 2"),
and neither is a lone capitalised word opening a sentence ("Winds in Oslo ...": without a
dictionary we cannot tell a common word from a name there, and guessing "name" floods false alarms).
"""

from __future__ import annotations

import re

from lmstack.agent.monitors.base import MonitorEvent, StepView

NUMBER = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.,])\d+(?:\.\d+)?(?![\w]|\.\d)")
QUOTED = re.compile(r"\"([^\"\n]{2,200})\"|\u201c([^\u201d\n]{2,200})\u201d")
ENTITY = re.compile(r"\b[A-Z][a-zA-Z']+(?:-[A-Z][a-zA-Z']+)*(?:[ ]+[A-Z][a-zA-Z']+(?:-[A-Z][a-zA-Z']+)*)*")
SENTENCE_START = re.compile(r"(?:^|[.!?:]\s+|\n\s*)$")
# Capitalised words that start sentences or address the reader without naming anything.
NOT_ENTITIES = {
    "i", "the", "a", "an", "it", "its", "this", "that", "these", "those", "there", "here", "he", "she", "they",
    "we", "you", "your", "my", "our", "sure", "yes", "no", "ok", "okay", "done", "great", "based", "according",
    "also", "so", "then", "next", "finally", "first", "however", "in", "on", "at", "for", "from", "with", "by",
    "as", "of", "and", "but", "or", "if", "let", "note", "please", "thanks", "thank", "today", "currently",
    "overall", "total", "result", "results", "answer", "summary", "all", "both", "each", "some", "after",
    "before", "when", "while", "what", "which", "who", "how", "why", "is", "are", "was", "were", "tool",
    "file", "looks", "good", "hello", "hi", "unfortunately", "meanwhile", "additionally", "to", "from",
}


def _numbers(text: str) -> list[float]:
    return [float(m.group().replace(",", "")) for m in NUMBER.finditer(text)]


def _number_grounded(claim: str, evidence_numbers: list[float]) -> bool:
    value = float(claim.replace(",", ""))
    decimals = len(claim.split(".")[1]) if "." in claim else 0
    return any(abs(e - value) < 1e-9 or round(e, decimals) == value for e in evidence_numbers)


def _strip_leading_words(phrase: str, start: int) -> tuple[str, int]:
    words = phrase.split(" ")
    while words and words[0].lower().strip("'") in NOT_ENTITIES:
        start += len(words[0]) + 1
        words = words[1:]
    return " ".join(words), start


def claims(text: str) -> list[tuple[str, int, int, str]]:
    """(kind, start, end, text) of every checkable claim in `text`."""
    found = []
    for m in NUMBER.finditer(text):
        if "." in m.group() or "," in m.group() or int(m.group()) >= 10:
            found.append(("number", m.start(), m.end(), m.group()))
    quoted_spans = []
    for m in QUOTED.finditer(text):
        group = 1 if m.group(1) is not None else 2
        found.append(("quote", m.start(group), m.end(group), m.group(group)))
        quoted_spans.append((m.start(), m.end()))
    for m in ENTITY.finditer(text):
        if any(a <= m.start() < b for a, b in quoted_spans):
            continue
        phrase, start = _strip_leading_words(m.group(), m.start())
        if start == m.start() and " " not in phrase and SENTENCE_START.search(text[:start]):
            continue
        if phrase and len(phrase) > 1 and phrase.lower() not in NOT_ENTITIES:
            found.append(("entity", start, start + len(phrase), phrase))
    return found


def check_grounding(step: StepView) -> list[MonitorEvent]:
    evidence = "\n".join(step.evidence)
    evidence_lower = " ".join(evidence.lower().split())
    evidence_numbers = _numbers(evidence)
    events = []
    for kind, start, end, claim in claims(step.content):
        if kind == "number":
            grounded = _number_grounded(claim, evidence_numbers)
        else:
            grounded = " ".join(claim.lower().split()) in evidence_lower
        if not grounded:
            events.append(MonitorEvent("grounding", start, end, claim,
                                       f"{kind} not found in any tool output, user message or memory"))
    return events
