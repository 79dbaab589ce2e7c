"""Solver and scorer arguments that cannot work are refused when the task is loaded, naming the task file, the
solver or scorer, the argument and the form it needs: before, the run was recorded and every sample failed."""

import pytest

from lmstack.evals.loader import load_task
from lmstack.evals.sample import Sample, TaskState
from lmstack.evals.task import TaskError

FORM = 'a list of [question, answer] pairs of strings, e.g. [["What is 2+2?", "4"]]'
MONITORS = "['grounding', 'action_claims', 'uncertainty', 'tool_hallucination', 'self_consistency']"

# (the task file's solver and scorer lines, what its one-line error says after the file's name)
BAD_ARGUMENTS = {
    "few_shot": ("solver: [{few_shot: {examples: oops}}, generate]\nscorer: [exact]",
                 f"solver 'few_shot': examples must be {FORM}, got 'oops'"),
    "few_shot_pair": ("solver: [{few_shot: {examples: [[q, a], [q]]}}, generate]\nscorer: [exact]",
                      f"solver 'few_shot': examples must be {FORM}; examples[1] is ['q']"),
    "chat": ("solver: [{chat: {examples: oops}}]\nscorer: [exact]",  # the solver the file names, not its few_shot
             f"solver 'chat': examples must be {FORM}, got 'oops'"),
    "system_message": ("solver: [{system_message: {content: [a]}}, generate]\nscorer: [exact]",
                       "solver 'system_message': content must be a string, got ['a']"),
    "generate": ("solver: [{generate: {max_tokens: 0}}]\nscorer: [exact]",
                 "solver 'generate': max_tokens must be an integer >= 1, got 0"),
    "multiple_choice": ("solver: [{multiple_choice: {template: '{q} Answer:'}}]\nscorer: [choice]",
                        "solver 'multiple_choice': template '{q} Answer:' cannot be filled (KeyError: 'q'); it may use "
                        "{question}; write a literal brace as {{ or }}"),
    "agent": ("solver: [{agent: {monitors: {grounding: loud}}}]\nscorer: [exact]",
              "solver 'agent': monitors.grounding = 'loud': use one of off, flag, retry, stop"),
    "abs_tol": ("scorer: [{numeric: {abs_tol: -0.5}}]", "scorer 'numeric': abs_tol must be a number >= 0, got -0.5"),
    "rel_tol": ("scorer: [{numeric: {rel_tol: close}}]",
                "scorer 'numeric': rel_tol must be a number >= 0, got 'close'"),
    "numeric_pattern": ("scorer: [{numeric: {pattern: '(\\d+'}}]",
                        "scorer 'numeric': pattern '(\\\\d+' is not a valid regular expression (missing ), "
                        "unterminated subpattern at position 0)"),
    "numeric_groups": ("scorer: [{numeric: {pattern: '(\\d+) of (\\d+)'}}]",
                       "scorer 'numeric': pattern '(\\\\d+) of (\\\\d+)' has 2 capture groups; use at most 1"),
    "regex_group": ("scorer: [{regex_match: {pattern: 'answer: (\\w+)', group: 2}}]",
                    "scorer 'regex_match': group 2: pattern 'answer: (\\\\w+)' has 1 capture group(s)"),
    "schema": ("scorer: [{json_match: {schema: oops}}]", "scorer 'json_match': schema must be a JSON Schema mapping"),
    "schema_type": ("scorer: [{json_match: {schema: {type: objekt}}}]",
                    "scorer 'json_match': schema is not a valid JSON Schema: 'objekt' is not valid"),
    "fields": ("scorer: [{json_match: {fields: city}}]",  # a string would be compared letter by letter
               "scorer 'json_match': fields must be a list of strings, got 'city'"),
    "judge_template": ("scorer: [{model_graded: {template: 'Grade {answer}'}}]",
                       "scorer 'model_graded': template 'Grade {answer}' cannot be filled (KeyError: 'answer')"),
    "judge_max_tokens": ("scorer: [{model_graded: {max_tokens: 0}}]",
                         "scorer 'model_graded': max_tokens must be an integer >= 1, got 0"),
    "monitors": ("scorer: [{hallucination: {monitors: grounding}}]",
                 f"scorer 'hallucination': monitors must be a list of names from {MONITORS}, got 'grounding'"),
    "cpu_s": ("scorer: [{unit_tests: {cpu_s: 0}}]", "scorer 'unit_tests': cpu_s must be an integer >= 1, got 0"),
}


def write_task(folder, body: str):
    (folder / "rows.jsonl").write_text('{"id": "s", "input": "What is 1 plus 2?", "target": "3"}\n')
    path = folder / "task.yaml"
    path.write_text(f"dataset: rows.jsonl\n{body}\n")
    return path


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_a_bad_argument_is_refused_at_load_naming_the_file_component_and_form(case, tmp_path):
    body, says = BAD_ARGUMENTS[case]
    path = write_task(tmp_path, body)
    with pytest.raises(TaskError) as refused:
        load_task(str(path))
    message = str(refused.value)
    assert message.startswith(f"task file '{path}': {says}") and message.endswith("; fix its arguments"), message
    assert "\n" not in message


def test_a_python_task_names_its_spec_and_the_solver(tmp_path):
    (tmp_path / "tasks.py").write_text(
        "from lmstack.evals.task import Task, task\n"
        "from lmstack.evals.sample import Sample\n"
        "from lmstack.evals.solvers import few_shot\n"
        "from lmstack.evals.scorers import exact\n"
        "@task\n"
        "def shots():\n"
        "    return Task(dataset=[Sample(id='s', input='x')], solver=few_shot('oops'), scorer=exact())\n")
    spec = f"{tmp_path / 'tasks.py'}@shots"
    with pytest.raises(TaskError) as refused:
        load_task(spec)
    assert str(refused.value) == (f"task '{spec}': solver 'few_shot': examples must be {FORM}, got 'oops'; "
                                  "fix its arguments")


def test_yaml_reads_1e_6_as_text_and_the_tolerance_still_works(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-6 as the string '1e-6'; math.isclose refused it on every sample.
    task = load_task(str(write_task(tmp_path, "scorer: [{numeric: {abs_tol: 1e-6}}]")))
    state = TaskState(Sample(id="s", input="q", target="3"), epoch=0, seed=0)
    state.output = "It is 3.0000001."
    assert task.scorers[0](state, None).value == 1.0


@pytest.mark.parametrize("body, says", [
    ("field: {input: question}\nscorer: [exact]",  # a typo of `fields`: ignored, every sample failed
     "unknown key 'field'; a task file takes name, description, dataset, split, fields, solver, scorer, config"),
    ("scorer: [exact]\nconfig: {epochs: 0}", "epochs must be >= 1, got 0"),
    ("scorer: [exact]\nconfig: {max_tokens: 0}", "max_tokens must be >= 1 (the generation limit per model call), got 0"),
])
def test_a_task_files_unknown_key_or_bad_config_is_refused_naming_the_file(tmp_path, body, says):
    path = write_task(tmp_path, body)
    with pytest.raises(TaskError) as refused:
        load_task(str(path))
    assert str(refused.value) == f"task file '{path}': {says}"
