"""Checks of solver and scorer arguments, made when a factory builds its function.

A YAML task passes whatever the file says. An argument that cannot work (few_shot examples that are not pairs,
a pattern that does not compile, a negative tolerance) would otherwise fail every sample of a run already
recorded; checked here, it is refused at task load time, naming the argument and the form it needs.
Each check returns the value in the form the factory uses.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema

from lmstack.evals.task import ArgumentError


def text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ArgumentError(f"{name} must be a string, got {value!r}")
    return value


def strings(value: Any, name: str, allowed: list[str] | None = None) -> list[str]:
    """A list of strings, each one of `allowed` when given (a lone string would be read letter by letter)."""
    form = f"a list of names from {allowed}" if allowed else "a list of strings"
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ArgumentError(f"{name} must be {form}, got {value!r}")
    unknown = [v for v in value if allowed and v not in allowed]
    if unknown:
        raise ArgumentError(f"{name}: unknown '{unknown[0]}'; use names from {allowed}")
    return list(value)


def number(value: Any, name: str, minimum: float = 0, *, above: bool = False, integer: bool = False) -> float:
    """A number >= `minimum` (> with `above`). A numeric string is read: YAML takes 1e-6 for text (it wants 1.0e-6)."""
    kind = "an integer" if integer else "a number"
    bound = f"{'>' if above else '>='} {minimum:g}"
    try:
        if isinstance(value, bool):  # a bool is an int to Python, never a tolerance to a user
            raise ValueError
        parsed = (int if integer else float)(value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{name} must be {kind} {bound}, got {value!r}") from None
    if integer and isinstance(value, float) and parsed != value:
        raise ArgumentError(f"{name} must be {kind} {bound}, got {value!r}")
    if not (parsed > minimum if above else parsed >= minimum):  # NaN fails both
        raise ArgumentError(f"{name} must be {kind} {bound}, got {value!r}")
    return parsed


def pairs(value: Any, name: str) -> list[tuple[str, str]]:
    """[question, answer] pairs of strings (few-shot examples)."""
    form = 'a list of [question, answer] pairs of strings, e.g. [["What is 2+2?", "4"]]'
    if not isinstance(value, (list, tuple)):
        raise ArgumentError(f"{name} must be {form}, got {value!r}")
    for i, pair in enumerate(value):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise ArgumentError(f"{name} must be {form}; {name}[{i}] is {pair!r}")
    return [(question, answer) for question, answer in value]


def pattern(value: Any, name: str, flags: int = 0, max_groups: int | None = None) -> re.Pattern:
    if not isinstance(value, str):
        raise ArgumentError(f"{name} must be a regular expression (a string), got {value!r}")
    try:
        compiled = re.compile(value, flags)
    except re.error as err:
        raise ArgumentError(f"{name} {value!r} is not a valid regular expression ({err})") from None
    if max_groups is not None and compiled.groups > max_groups:
        raise ArgumentError(f"{name} {value!r} has {compiled.groups} capture groups; use at most {max_groups} "
                            "(write the others as (?:...))")
    return compiled


def template(value: Any, name: str, fields: list[str]) -> str:
    """A str.format template that fills with `fields` alone (an unknown {placeholder} fails every sample)."""
    allowed = ", ".join(f"{{{f}}}" for f in fields)
    try:
        text(value, name).format(**{f: "" for f in fields})
    except (KeyError, IndexError, ValueError) as err:
        raise ArgumentError(f"{name} {value!r} cannot be filled ({type(err).__name__}: {err}); it may use {allowed}; "
                            "write a literal brace as {{ or }}") from None
    return value


def json_schema(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ArgumentError(f"{name} must be a JSON Schema mapping, e.g. {{type: object, required: [city]}}, "
                            f"got {value!r}")
    try:
        jsonschema.validators.validator_for(value).check_schema(value)
    except jsonschema.SchemaError as err:
        raise ArgumentError(f"{name} is not a valid JSON Schema: {err.message}") from None
    return value
