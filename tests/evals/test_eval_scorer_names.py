"""Scores are kept by scorer name: two scorers of one name in a task are refused before a run is recorded (the
second's scores overwrote the first's), and `name:` in YAML, or `named()` in Python, gives a scorer its own."""

import json

import pytest

from cli_testing import one_line_error
from lmstack.agent.client import OpenAIClient
from lmstack.agent.testing.scripted_server import ScriptedServer, free_port
from lmstack.evals.loader import load_task
from lmstack.evals.model import CachedModel
from lmstack.evals.runner import run_eval
from lmstack.evals.sample import Sample
from lmstack.evals.scorers import numeric
from lmstack.evals.solvers import generate
from lmstack.evals.store import Store
from lmstack.evals.task import Task, TaskError, named

CITIES = [("Capital of Norway, and a number?", {"city": "Oslo", "n": 3}, '{"city": "Oslo", "n": 4}'),
          ("Capital of Italy, and a number?", {"city": "Rome", "n": 5}, '{"city": "Rome", "n": 5}')]


def city_task(folder, scorers: str):
    (folder / "cities.jsonl").write_text("".join(json.dumps({"id": f"c{i}", "input": q, "target": t}) + "\n"
                                                 for i, (q, t, _) in enumerate(CITIES)))
    path = folder / "cities.yaml"
    path.write_text(f"name: cities\ndataset: cities.jsonl\nsolver: [generate]\nscorer: {scorers}\n")
    return path


def test_yaml_name_gives_a_second_json_match_its_own_row(tmp_path):
    scorers = "[{json_match: {fields: [city]}}, {json_match: {fields: [n]}, name: n_match}]"
    task = load_task(str(city_task(tmp_path, scorers)))
    store = Store(tmp_path / "db.sqlite")
    with ScriptedServer({"scripts": {"m": [{"answers": {q: a for q, _, a in CITIES}}]}}) as server:
        outcome = run_eval(task, CachedModel(OpenAIClient(server.base_url, "m"), store), store, run_id="r",
                           progress=False)
    means = {name: by_reducer["mean"]["mean"] for name, by_reducer in outcome.summary["scores"].items()}
    assert means == {"json_match": 1.0, "n_match": 0.5}  # both cities right; one number wrong
    c0 = next(r for r in Store(store.path).samples("r") if r.sample_id == "c0")
    assert (c0.scores["json_match"]["value"], c0.scores["n_match"]["value"]) == (1.0, 0.0)


def test_two_scorers_of_one_name_in_a_task_file_are_refused_before_a_run(tmp_path, cli):
    path = city_task(tmp_path, "[{json_match: {fields: [city]}}, json_match]")
    db = tmp_path / "db.sqlite"
    done = cli("eval", "run", path, "--model", f"http://127.0.0.1:{free_port()}/v1", "--model-name", "m", "--db", db)
    assert one_line_error(done, "eval") == (
        f"lmstack eval: error: task file '{path}' has two scorers named 'json_match', and scores are kept by name; "
        "give one its own with `name:`, e.g. {json_match: {...}, name: json_match_2}")
    assert Store(db).runs() == []


def test_python_tasks_are_refused_too_and_named_renames(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    dataset = [Sample(id="s", input="What is 1 plus 2?", target="3")]
    twice = Task(dataset=dataset, solver=generate(), scorer=[numeric(), numeric(abs_tol=0.5)], name="twice")
    unreachable = CachedModel(OpenAIClient(f"http://127.0.0.1:{free_port()}/v1", "m"), store)
    with pytest.raises(TaskError, match=r"^task 'twice' has two scorers named 'numeric', and scores are kept by "
                                        r"name; give one its own with lmstack.evals.task.named\(numeric\(...\), "
                                        r"'numeric_2'\)$"):
        run_eval(twice, unreachable, store, progress=False)
    assert store.runs() == []
    loose = named(numeric(abs_tol=0.5), "numeric_loose")
    renamed = Task(dataset=dataset, solver=generate(), scorer=[numeric(), loose], name="renamed")
    with ScriptedServer({"scripts": {"m": [{"content": "About 3.3."}]}}) as server:
        outcome = run_eval(renamed, CachedModel(OpenAIClient(server.base_url, "m"), store), store, progress=False)
    means = {name: by_reducer["mean"]["mean"] for name, by_reducer in outcome.summary["scores"].items()}
    assert means == {"numeric": 0.0, "numeric_loose": 1.0}
