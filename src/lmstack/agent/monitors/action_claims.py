"""Action claims: the assistant says it did something ("I saved the file", "the tests have been run")
and no successful tool call in the run did that kind of thing.

A claim's verb maps to an action class (write, run, calculate, search, ...); a tool's declared
`actions` map through the same table. If the claim names a file (`notes.txt`), a matching call must
also mention that file in its arguments.
"""

from __future__ import annotations

import json
import re

from lmstack.agent.monitors.base import MonitorEvent, StepView

ACTION_CLASSES = {
    "write": "saved save wrote write written created create updated update stored store edited edit appended "
             "append overwrote",
    "run": "ran run executed execute tested test",
    "calculate": "calculated calculate computed compute",
    "search": "searched search looked look checked check fetched fetch queried query recalled recall",
    "read": "read opened open loaded load",
    "remember": "remembered remember noted note memorized",
    "delete": "deleted delete removed remove",
    "send": "sent send emailed email",
    "list": "listed list",
}
VERB_CLASS = {verb: cls for cls, verbs in ACTION_CLASSES.items() for verb in verbs.split()}
PAST_VERBS = "saved|wrote|written|created|updated|stored|edited|appended|overwrote|ran|executed|tested|calculated|computed|" \
             "searched|looked up|checked|fetched|queried|recalled|read|opened|loaded|remembered|noted|memorized|" \
             "deleted|removed|sent|emailed|listed"
FIRST_PERSON = re.compile(
    rf"\bI(?:'ve| have)?\s+(?:(?:just|already|also|now|successfully|then|first)\s+)*({PAST_VERBS})\b[^.!?\n]*",
    re.IGNORECASE)
PASSIVE = re.compile(r"\b(?:has|have) (?:now |already |successfully )?been (saved|written|created|updated|stored|run|"
                     r"executed|tested|calculated|computed|deleted|removed|sent)\b", re.IGNORECASE)
PASSIVE_CLASS = {"written": "write", "run": "run"}
FILE_NAME = re.compile(r"\b[\w\-/]+\.[A-Za-z][A-Za-z0-9]{0,4}\b")


def _claim_class(verb: str) -> str:
    verb = verb.lower()
    return VERB_CLASS.get(verb.split()[0], PASSIVE_CLASS.get(verb, "other"))


def _tool_classes(actions: tuple[str, ...]) -> set[str]:
    return {VERB_CLASS[a] for a in actions if a in VERB_CLASS}


def check_action_claims(step: StepView) -> list[MonitorEvent]:
    events = []
    matches = [(m, m.group(1)) for m in FIRST_PERSON.finditer(step.content)]
    matches += [(m, m.group(1)) for m in PASSIVE.finditer(step.content)]
    for match, verb in matches:
        action = _claim_class(verb)
        # Sentence ends are punctuation followed by space or the end ("notes.txt" is not one).
        sentence_end = re.search(r"[.!?](?=\s|$)|\n|$", step.content[match.start():]).start() + match.start()
        starts = [b.end() for b in re.finditer(r"[.!?]\s+|\n", step.content[:match.start()])]
        sentence = step.content[starts[-1] if starts else 0:sentence_end]
        clause = step.content[match.start():sentence_end]
        files = FILE_NAME.findall(sentence)
        supporting = [c for c in step.past_calls if c.ok and action in _tool_classes(step.tool_actions.get(c.name, ()))
                      and all(f in json.dumps(c.arguments) for f in files)]
        if not supporting:
            what = f" involving {', '.join(files)}" if files else ""
            events.append(MonitorEvent("action_claims", match.start(), sentence_end, clause,
                                       f"claims a '{action}' action{what} but no successful tool call in this run did it"))
    return events
