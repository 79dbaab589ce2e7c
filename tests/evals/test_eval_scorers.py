"""Scorers against hand-computed verdicts."""

import pytest

from lmstack.evals.sample import Sample, TaskState
from lmstack.evals.scorers import bpb, choice, exact, includes, json_match, numeric, regex_match


def state(output, target, **sample_fields):
    s = TaskState(Sample(id="s", input="q", target=target, **sample_fields), epoch=0, seed=0)
    s.output = output
    return s


def value(scorer, output, target, **kw):
    return scorer(state(output, target, **kw), None).value


def test_exact_normalizes_case_space_and_final_period():
    assert value(exact(), "  Paris. ", "paris") == 1.0
    assert value(exact(), "Paris is it", "paris") == 0.0
    assert value(exact(ignore_case=False), "paris", "Paris") == 0.0
    assert value(exact(), "b", ["a", "B"]) == 1.0


def test_includes():
    assert value(includes(), "The answer is Paris, France", "paris") == 1.0
    assert value(includes(), "London", "paris") == 0.0


def test_regex_extraction_takes_last_match():
    scorer = regex_match(r"answer:\s*(\w+)")
    assert value(scorer, "answer: no ... final answer: 42", "42") == 1.0
    result = scorer(state("nothing here", "42"), None)
    assert result.value == 0.0 and "found nothing" in result.explanation


def test_numeric_tolerance_and_formats():
    assert value(numeric(), "so it is 1,234.0 apples", "1234") == 1.0
    assert value(numeric(abs_tol=0.001), "3.14159", "3.14") == 0.0
    assert value(numeric(abs_tol=0.01), "3.145", "3.14") == 1.0
    assert value(numeric(rel_tol=0.1), "105", "100") == 1.0
    assert value(numeric(), "-7", "-7") == 1.0
    assert value(numeric(), "no digits", "3") == 0.0


def test_numeric_with_non_numeric_target_raises():
    with pytest.raises(ValueError, match="not a number"):
        numeric()(state("3", "three"), None)


def test_json_schema_and_fields():
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "n": {"type": "integer"}},
              "required": ["city", "n"]}
    scorer = json_match(schema=schema)
    assert value(scorer, 'Here: ```{"city": "Oslo", "n": 3}```', {"city": "Oslo", "n": 3}) == 1.0
    wrong_field = scorer(state('{"city": "Rome", "n": 3}', {"city": "Oslo", "n": 3}), None)
    assert wrong_field.value == 0.0 and "city" in wrong_field.explanation
    bad_schema = scorer(state('{"city": "Oslo", "n": "3"}', {"city": "Oslo"}), None)
    assert bad_schema.value == 0.0 and bad_schema.explanation.startswith("schema:")
    assert value(json_match(fields=["a"]), '{"a": 1, "b": 2}', {"a": 1, "b": 5}) == 1.0
    assert value(json_match(), "not json", {"a": 1}) == 0.0


def test_choice_accepts_index_letter_or_text():
    for target in (1, "B", "blue"):
        s = state("blue", target, choices=["red", "blue"])
        s.metadata.update(choice_index=1, choice_index_norm=0)
        result = choice()(s, None)
        assert result.value == 1.0 and result.metadata["norm_correct"] is False


def test_bpb_is_bits_over_bytes_and_lower_is_better():
    s = state("", None)
    s.metadata.update(bits=12.0, bytes=8, tokens=3)
    scorer = bpb()
    assert scorer(s, None).value == 1.5
    assert scorer.higher_is_better is False and scorer.registry_name == "bpb"
