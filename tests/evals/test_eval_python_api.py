"""Mistakes made building a Task in Python are refused by name when the Task is built, not met as every sample
failing alike (or as a TypeError deep in the runner)."""

import pytest

from lmstack.evals.runner import resolve_config
from lmstack.evals.sample import Sample
from lmstack.evals.scorers import includes
from lmstack.evals.solvers import generate
from lmstack.evals.task import Task, TaskError

ROWS = [Sample("1", "Capital of France?", "Paris")]


@pytest.mark.parametrize("kwargs, message", [
    ({"dataset": [{"input": "hi", "target": "x"}]}, "Task dataset must be a list of Sample, got dict"),
    ({"dataset": ["hi"]}, "Task dataset must be a list of Sample, got str"),
    ({"solver": generate}, r"solver=generate\(\) rather than solver=generate"),
    ({"scorer": [includes]}, r"scorer=includes\(\) rather than scorer=includes"),
    ({"config": {"epochs": 2}}, "Task config must be a TaskConfig, got dict"),
])
def test_a_task_built_wrong_is_refused_naming_the_field(kwargs, message):
    with pytest.raises(TaskError, match=message):
        Task(**{"dataset": ROWS, "solver": generate(), "scorer": [includes()], **kwargs})


@pytest.mark.parametrize("overrides, message", [
    ({"max_token": 4}, "unknown override 'max_token'; valid: epochs, seed, limit, max_tokens"),
    ({"max_tokens": "4"}, "max_tokens must be an integer or None, got '4'"),
    ({"epochs": 2.0}, "epochs must be an integer, got 2.0"),
    ({"temperature": "0.5"}, "temperature must be a number, got '0.5'"),
    ({"reducers": "pass@2"}, r"reducers must be a list of names, e.g. \['mean', 'pass@3'\], got 'pass@2'"),
])
def test_settings_of_the_wrong_type_are_refused_by_name(overrides, message):
    task = Task(dataset=ROWS, solver=generate(), scorer=includes())
    with pytest.raises(TaskError, match=message):  # before: a TypeError ('<' between str and int) or 'reducer p'
        resolve_config(task, overrides)
    assert resolve_config(task, {"max_tokens": 4, "epochs": 2, "reducers": ["pass@2"]}).max_tokens == 4
