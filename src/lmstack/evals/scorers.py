"""Scorers that read the output text: exact, includes, regex extraction, numeric, JSON schema / fields.

Each is a `@scorer` factory returning `score(state, ctx) -> Score`; the value is 1.0 or 0.0 and the
`answer` says what was compared, so a wrong score can be understood from the report alone.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import jsonschema

from lmstack.evals import arguments
from lmstack.evals.sample import Score, TaskState
from lmstack.evals.task import ArgumentError, scorer

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?|-?\.\d+")


def normalize(text: str, ignore_case: bool = True) -> str:
    """Whitespace collapsed, outer punctuation stripped (a trailing '.' is not a wrong answer)."""
    text = " ".join(str(text).split()).strip(" .!?\"'`")
    return text.casefold() if ignore_case else text


def _binary(ok: bool, answer: str | None, explanation: str | None = None, **metadata: Any) -> Score:
    return Score(1.0 if ok else 0.0, answer=answer, explanation=explanation, metadata=metadata)


@scorer
def exact(ignore_case: bool = True):
    """The whole output equals one of the targets (after `normalize`)."""
    def score(state: TaskState, ctx: Any) -> Score:
        answer = normalize(state.output, ignore_case)
        return _binary(answer in {normalize(t, ignore_case) for t in state.sample.targets}, answer)
    return score


@scorer
def includes(ignore_case: bool = True):
    """One of the targets appears somewhere in the output."""
    def score(state: TaskState, ctx: Any) -> Score:
        output = normalize(state.output, ignore_case)
        hit = next((t for t in state.sample.targets if normalize(t, ignore_case) in output), None)
        return _binary(hit is not None, hit)
    return score


@scorer
def regex_match(pattern: str, group: int = 1, ignore_case: bool = True):
    """Extract with `pattern` (last match, capture `group`) and compare with the targets exactly."""
    compiled = arguments.pattern(pattern, "pattern", re.IGNORECASE if ignore_case else 0)
    group = arguments.number(group, "group", integer=True)
    if group > compiled.groups and compiled.groups:  # without groups the whole match is the answer
        raise ArgumentError(f"group {group}: pattern {pattern!r} has {compiled.groups} capture group(s); "
                            "use one of them, or 0 for the whole match")

    def score(state: TaskState, ctx: Any) -> Score:
        matches = list(compiled.finditer(state.output))
        if not matches:
            return _binary(False, None, f"pattern {pattern!r} found nothing in the output")
        answer = matches[-1].group(group if compiled.groups else 0)
        ok = normalize(answer, ignore_case) in {normalize(t, ignore_case) for t in state.sample.targets}
        return _binary(ok, answer)
    return score


def parse_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


@scorer
def numeric(abs_tol: float = 1e-6, rel_tol: float = 0.0, pattern: str | None = None):
    """The last number in the output (or the `pattern` capture) is within tolerance of the target."""
    abs_tol, rel_tol = arguments.number(abs_tol, "abs_tol"), arguments.number(rel_tol, "rel_tol")
    # One capture group at most: with more, findall gives tuples, not the number's text.
    extract = NUMBER if pattern is None else arguments.pattern(pattern, "pattern", max_groups=1)

    def score(state: TaskState, ctx: Any) -> Score:
        found = extract.findall(state.output)
        answer = parse_number(found[-1]) if found else None
        target = parse_number(str(state.sample.target)) if state.sample.target is not None else None
        if target is None:
            raise ValueError(f"sample {state.sample.id}: target {state.sample.target!r} is not a number")
        if answer is None:
            return _binary(False, None, "no number in the output")
        ok = math.isclose(answer, target, abs_tol=abs_tol, rel_tol=rel_tol)
        return _binary(ok, found[-1], None if ok else f"{answer} != {target}")
    return score


def extract_json(text: str) -> Any:
    """The first JSON object or array in `text` (models wrap JSON in prose and code fences)."""
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                return decoder.raw_decode(text[i:])[0]
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON object in the output")


@scorer
def json_match(schema: dict[str, Any] | None = None, fields: list[str] | None = None):
    """The output holds JSON that validates against `schema` and whose `fields` equal the target's.

    The target is a dict; with `fields=None` every key of the target is compared.
    """
    if schema is not None:
        arguments.json_schema(schema, "schema")
    if fields is not None:
        arguments.strings(fields, "fields")

    def score(state: TaskState, ctx: Any) -> Score:
        try:
            data = extract_json(state.output)
        except ValueError as err:
            return _binary(False, None, str(err))
        if schema is not None:
            try:
                jsonschema.validate(data, schema)
            except jsonschema.ValidationError as err:
                return _binary(False, json.dumps(data), f"schema: {err.message}")
        target = state.sample.target if isinstance(state.sample.target, dict) else {}
        keys = fields if fields is not None else list(target)
        if keys and not isinstance(data, dict):
            return _binary(False, json.dumps(data), "expected a JSON object")
        wrong = [k for k in keys if data.get(k) != target.get(k)]
        return _binary(not wrong, json.dumps(data), f"fields differ: {wrong}" if wrong else None,
                       fields={k: data.get(k) for k in keys})
    return score


@scorer
def choice():
    """The multiple-choice solver picked the target (an index, a letter A-Z, or the choice's text)."""
    def score(state: TaskState, ctx: Any) -> Score:
        choices = state.sample.choices or []
        target = state.sample.target
        if isinstance(target, str) and len(target) == 1 and target.isalpha() and target.upper() not in choices:
            target = ord(target.upper()) - ord("A")
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        index = target if isinstance(target, int) else choices.index(target)
        picked = state.metadata["choice_index"]
        return _binary(picked == index, choices[picked], norm_correct=state.metadata["choice_index_norm"] == index)
    return score


@scorer
def bpb():
    """Bits per byte of the sample's text (lower is better), from the `bits_per_byte` solver."""
    def score(state: TaskState, ctx: Any) -> Score:
        value = state.metadata["bits"] / state.metadata["bytes"]
        return Score(value, answer=f"{value:.4f}", metadata={k: state.metadata[k] for k in ("bits", "bytes", "tokens")})
    score.higher_is_better = False
    return score
