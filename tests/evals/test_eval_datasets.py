"""Datasets (JSONL, CSV, generator, HF) and task loading (registry, Python file, YAML)."""

import importlib.util
import json

import pytest

from cli_testing import one_line_error
from lmstack.agent.testing.scripted_server import ScriptedServer
from lmstack.evals.dataset import DatasetError, FieldMap, from_generator, load_csv, load_hf, load_jsonl
from lmstack.evals.loader import load_task
from lmstack.evals.store import Store
from lmstack.evals.task import SCORERS, TASKS, TaskError


def test_jsonl_bad_rows_become_samples_with_reasons(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"id": "a", "input": "2+2?", "target": "4", "topic": "math"}) + "\n"
                    + json.dumps({"id": "b", "target": "5"}) + "\n"
                    + "{not json\n\n"
                    + json.dumps({"input": [{"role": "user", "content": "hi"}], "target": "hello", "group": "g1"}) + "\n")
    samples = load_jsonl(path)
    assert [s.id for s in samples] == ["a", "b", "3", "5"]
    assert samples[0].error is None and samples[0].metadata == {"topic": "math"}
    assert "d.jsonl line 2" in samples[1].error and "no 'input' field" in samples[1].error
    assert "line 3" in samples[2].error and "not valid JSON" in samples[2].error
    assert samples[3].input_text() == "hi" and samples[3].group == "g1"


def test_csv_with_field_mapping(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question,answer,choices\nSky?,blue,red|blue\n,x,\n")
    samples = load_csv(path, FieldMap(input="question", target="answer"))
    assert samples[0].input == "Sky?" and samples[0].target == "blue" and samples[0].choices == ["red", "blue"]
    assert samples[0].id == "2" and "line 3" in samples[1].error


def test_bad_choices_become_sample_errors(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('input,choices\nPick?,"[""a"", ""b"""\nPick?,"[""a"", ""b""]"\n')
    broken, fine = load_csv(path)
    assert "c.csv line 2" in broken.error and "'choices'" in broken.error and "not valid JSON" in broken.error
    assert fine.error is None and fine.choices == ["a", "b"]
    path = tmp_path / "c.jsonl"
    rows = [{"input": "x", "choices": '["a"'}, {"input": "x", "choices": "[1]"}, {"input": "x", "choices": {"a": 1}},
            {"input": "x", "choices": '{"a": 1}'}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    samples = load_jsonl(path)
    assert "line 1" in samples[0].error and "not valid JSON" in samples[0].error
    assert samples[1].error is None and samples[1].choices == [1]
    assert "line 3" in samples[2].error and "must be a list" in samples[2].error and samples[2].choices is None
    assert samples[3].error is None and samples[3].choices == ['{"a": 1}']  # not JSON-looking: split on '|'


def test_non_utf8_files_name_the_file_and_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(json.dumps({"input": "ok"}).encode() + b"\n" + b'{"input": "caf\xe9"}\n'
                     + json.dumps({"input": "fine"}).encode() + b"\n")
    samples = load_jsonl(path)
    assert samples[0].error is None and samples[2].error is None
    assert "latin.jsonl line 2" in samples[1].error and "UTF-8" in samples[1].error
    path = tmp_path / "latin.csv"
    path.write_bytes(b"input,target\nok,1\ncaf\xe9,2\n")
    with pytest.raises(DatasetError, match=r"latin\.csv' line 3: not valid UTF-8"):
        load_csv(path)


def test_generator_dataset():
    samples = from_generator(lambda: ({"input": f"{i}+1", "target": str(i + 1)} for i in range(3)))
    assert [s.target for s in samples] == ["1", "2", "3"] and samples[2].id == "2"


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_jsonl(tmp_path / "nope.jsonl")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")
def test_hf_without_datasets_package_says_how_to_install():
    with pytest.raises(DatasetError, match=r"pip install 'lmstack\[hf\]'"):
        load_hf("gsm8k")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="needs the datasets package")
def test_hf_loader_reads_a_local_json_dataset(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"input": "q", "target": "a"}) + "\n")
    samples = load_hf("json", split="train", data_files=str(tmp_path / "d.json"))
    assert samples[0].input == "q" and samples[0].target == "a"


def test_yaml_task(tmp_path):
    (tmp_path / "caps.jsonl").write_text(json.dumps({"question": "Capital of France?", "answer": "Paris"}) + "\n")
    (tmp_path / "caps.yaml").write_text(
        "name: capitals\ndataset: caps.jsonl\nfields: {input: question, target: answer}\n"
        "solver: [{system_message: {content: 'One word.'}}, generate]\nscorer: [includes, {regex_match: {pattern: '(\\w+)'}}]\n"
        "config: {epochs: 2, max_tokens: 8}\n")
    task = load_task(str(tmp_path / "caps.yaml"))
    assert task.name == "capitals" and task.config.epochs == 2 and task.config.max_tokens == 8
    assert task.dataset[0].target == "Paris" and len(task.solvers) == 2
    assert [s.registry_name for s in task.scorers] == ["includes", "regex_match"]


def test_yaml_task_errors_name_the_problem(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"input": "x"}\n')
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: d.jsonl\nscorer: [nonsense]\n")
    with pytest.raises(TaskError, match="unknown scorer 'nonsense'"):
        load_task(str(bad))
    bad.write_text("dataset: d.jsonl\nscorer: [exact]\nconfig: {epoch: 3}\n")
    with pytest.raises(Exception, match="unknown config key 'epoch'"):
        load_task(str(bad))


def test_python_file_task(tmp_path):
    (tmp_path / "my_tasks.py").write_text(
        "from lmstack.evals.task import Task, task\n"
        "from lmstack.evals.sample import Sample\n"
        "from lmstack.evals.solvers import generate\n"
        "from lmstack.evals.scorers import exact\n"
        "@task\n"
        "def doubled(n: int = 2):\n"
        "    return Task(dataset=[Sample(id=str(i), input=f'{i}*2', target=str(2*i)) for i in range(n)],\n"
        "                solver=generate(), scorer=exact())\n")
    task = load_task(f"{tmp_path / 'my_tasks.py'}@doubled", {"n": 3})
    assert task.name == "doubled" and len(task.dataset) == 3
    with pytest.raises(TaskError, match="has no argument 'm'"):
        load_task(f"{tmp_path / 'my_tasks.py'}@doubled", {"m": 3})
    with pytest.raises(TaskError, match="unknown task"):
        load_task("no_such_task")


def test_a_task_files_tasks_and_scorers_are_its_own(tmp_path):
    """Loading a Python task file registered what it defines for the rest of the process: `eval list` listed its tasks
    as built-in, a bare name found them, and one named as a built-in (a task, or a scorer for every later YAML task)
    replaced it."""
    builtin_task, builtin_scorer = TASKS["toolcalls"], SCORERS["includes"]
    (tmp_path / "mine.py").write_text(
        "from lmstack.evals.task import Task, scorer, task\n"
        "from lmstack.evals.sample import Sample\n"
        "from lmstack.evals.solvers import generate\n"
        "@scorer\n"
        "def includes():\n"
        "    return lambda state, ctx: None\n"
        "@task\n"
        "def toolcalls():\n"
        "    return Task(dataset=[Sample(id='mine', input='hi')], solver=generate(), scorer=includes())\n"
        "@task\n"
        "def only_mine():\n"
        "    return toolcalls()\n")
    assert load_task(f"{tmp_path / 'mine.py'}@toolcalls").dataset[0].id == "mine"
    assert load_task(f"{tmp_path / 'mine.py'}@only_mine").dataset[0].id == "mine"
    assert (TASKS["toolcalls"], SCORERS["includes"]) == (builtin_task, builtin_scorer)
    with pytest.raises(TaskError, match="unknown task 'only_mine'"):
        load_task("only_mine")


def test_duplicate_ids_and_taken_run_ids_are_clear_errors(tmp_path):
    from lmstack.evals.dataset import check_unique_ids
    from lmstack.evals.sample import Sample
    from lmstack.evals.store import RunExists, Store

    with pytest.raises(DatasetError, match="sample id 'a' appears twice"):
        check_unique_ids([Sample(id="a", input="x"), Sample(id="a", input="y")])
    store = Store(tmp_path / "db.sqlite")
    store.create_run("t", "m", {}, {}, run_id="nightly")
    with pytest.raises(RunExists, match="--resume nightly"):
        store.create_run("t", "m", {}, {}, run_id="nightly")


README_TASK = '''
from lmstack.evals.task import Task, task
from lmstack.evals.dataset import FieldMap, load_jsonl
from lmstack.evals.solvers import chat
from lmstack.evals.scorers import includes

@task
def capitals(n: int = 100):
    rows = load_jsonl("capitals.jsonl", FieldMap(input="question", target="answer"))  # {"question": .., "answer": ..}
    return Task(dataset=rows[:n], solver=chat(system="Answer in one word."), scorer=[includes()])

@task
def misspelt():
    return Task(dataset=load_jsonl("capital.jsonl"), solver=chat(), scorer=[includes()])
'''


def test_a_python_tasks_relative_dataset_path_starts_from_the_task_files_folder(tmp_path, cli):
    """As a YAML task's does (and as in Inspect): `eval run evt/my_tasks.py@capitals` from another folder found no
    'capitals.jsonl' before, since the path was taken from the working directory."""
    folder = tmp_path / "evt"
    folder.mkdir()
    (folder / "my_tasks.py").write_text(README_TASK)
    (folder / "capitals.jsonl").write_text(json.dumps({"question": "Capital of France?", "answer": "Paris"}) + "\n")
    db = tmp_path / "db.sqlite"
    script = {"scripts": {"good": [{"answers": {"Capital of France?": "Paris."}}]}}
    with ScriptedServer(script) as server:  # the working directory, this process's, is not `folder` (nor its parent)
        done = cli("eval", "run", f"{folder / 'my_tasks.py'}@capitals", "--model", server.base_url,
                   "--model-name", "good", "--db", db, "--run-id", "capitals")
    assert done.returncode == 0 and "run capitals: 1 results, 0 errors" in done.stdout, done.stderr[-2000:]
    assert Store(db).run("capitals").summary["scores"]["includes"]["mean"]["mean"] == 1.0
    missing = cli("eval", "run", f"{folder / 'my_tasks.py'}@misspelt", "--model", "http://127.0.0.1:9/v1",
                  "--model-name", "good", "--db", db)
    assert one_line_error(missing, "eval") == (
        f"lmstack eval: error: dataset file '{folder / 'capital.jsonl'}' does not exist (a task file's relative "
        "paths start from its folder); check the path")


def test_a_yaml_tasks_missing_dataset_names_where_relative_paths_start(tmp_path):
    """A YAML task's relative dataset path starts from its folder by the same rule as a Python task's, and its
    refusal says so too."""
    folder = tmp_path / "evt"
    folder.mkdir()
    (folder / "capitals.yaml").write_text("dataset: capital.jsonl\nscorer: [includes]\n")
    with pytest.raises(DatasetError) as missing:
        load_task(str(folder / "capitals.yaml"))
    assert str(missing.value) == (f"dataset file '{folder / 'capital.jsonl'}' does not exist (a task file's relative "
                                  "paths start from its folder); check the path")
