"""`lmstack eval` on the command line: typed -T arguments, user errors as one line with exit code 2,
and the model name `eval lm-eval` sends."""

import pytest

from lmstack.agent.testing.scripted_server import ScriptedServer, free_port
from lmstack.cli import main
from lmstack.evals.loader import load_task
from lmstack.evals.store import Store


def eval_run(tmp_path, *extra):
    # Nothing listens at the URL: every case here must stop before a model is asked anything.
    return main(["eval", "run", "toolcalls", "--model", f"http://127.0.0.1:{free_port()}/v1", "--model-name", "m",
                 "--db", str(tmp_path / "db.sqlite"), *extra])


@pytest.mark.parametrize("word, expected", [("true", True), ("No", False), ("1", True), ("0", False),
                                            ("ON", True), ("off", False), ("yes", True), ("FALSE", False)])
def test_boolean_task_arguments_parse_strictly(word, expected):
    task = load_task("toolcalls", {"n": "3", "tools": word})
    assert task.name == ("toolcalls" if expected else "toolcalls_no_tools")
    assert [s.id for s in task.dataset] == [s.id for s in load_task("toolcalls", {"n": 3}).dataset]


def test_string_task_arguments_keep_their_text(tmp_path):
    (tmp_path / "tasks.py").write_text(
        "from lmstack.evals.task import Task, task\n"
        "from lmstack.evals.sample import Sample\n"
        "from lmstack.evals.solvers import generate\n"
        "from lmstack.evals.scorers import exact\n"
        "@task\n"
        "def named(split: str = 'test', k=1):\n"
        "    return Task(dataset=[Sample(id=split, input='x', target=str(k))], solver=generate(), scorer=exact())\n")
    task = load_task(f"{tmp_path / 'tasks.py'}@named", {"split": "2024", "k": "7"})
    # an annotated str stays text; an unannotated argument is read TOML-style, as before
    assert task.dataset[0].id == "2024" and task.dataset[0].target == "7"


def test_path_arguments_and_unresolvable_annotations(tmp_path):
    (tmp_path / "tasks.py").write_text(
        "from __future__ import annotations\n"
        "from pathlib import Path\n"
        "from typing import TYPE_CHECKING\n"
        "from lmstack.evals.task import Task, task\n"
        "from lmstack.evals.sample import Sample\n"
        "from lmstack.evals.solvers import generate\n"
        "from lmstack.evals.scorers import exact\n"
        "if TYPE_CHECKING:\n"
        "    from somewhere_only_for_type_checkers import Thing\n"
        "@task\n"
        "def by_path(file: Path = Path('x.jsonl')):\n"
        "    return Task(dataset=[Sample(id=type(file).__name__, input=str(file), target='')], solver=generate(),\n"
        "                scorer=exact())\n"
        "@task\n"
        "def unresolvable(thing: Thing = None, n=1):\n"
        "    return Task(dataset=[Sample(id=str(n), input='x', target='')], solver=generate(), scorer=exact())\n")
    # A class the config parser does not know is built from the string (it used to be refused).
    by_path = load_task(f"{tmp_path / 'tasks.py'}@by_path", {"file": "data.jsonl"})
    assert (by_path.dataset[0].id, by_path.dataset[0].input) in {("PosixPath", "data.jsonl"), ("WindowsPath", "data.jsonl")}
    # Annotations that cannot be resolved do not stop the task: with no -T it loads; -T values are read by their look.
    assert load_task(f"{tmp_path / 'tasks.py'}@unresolvable").dataset[0].id == "1"
    assert load_task(f"{tmp_path / 'tasks.py'}@unresolvable", {"n": "3"}).dataset[0].id == "3"


@pytest.mark.parametrize("arg, message", [
    ("n=abc", "-T n=abc: expected an integer"),
    ("tools=maybe", "-T tools=maybe: expected a boolean (true/false, yes/no, 1/0, on/off)"),
])
def test_a_task_argument_of_the_wrong_type_is_one_line(tmp_path, capsys, arg, message):
    assert eval_run(tmp_path, "-T", arg) == 2
    assert capsys.readouterr().err == f"lmstack eval: error: task 'toolcalls': {message}\n"
    assert Store(tmp_path / "db.sqlite").runs() == []


def test_max_concurrency_below_one_is_refused_before_the_run_exists(tmp_path, capsys):
    assert eval_run(tmp_path, "--max-concurrency", "0") == 2
    assert capsys.readouterr().err == ("lmstack eval: error: --max-concurrency 0: must be at least 1 (parallel "
                                       "requests per endpoint; default 8)\n")
    assert Store(tmp_path / "db.sqlite").runs() == []  # nothing left 'running' in `eval list`


def test_lm_eval_sends_the_model_name_the_server_lists(capsys):
    with ScriptedServer({"scripts": {"final": [{"content": "unused"}]}}) as server:
        assert main(["eval", "lm-eval", server.base_url, "--tasks", "hellaswag", "--dry-run"]) == 0
    assert "--model_args model=final,base_url=" in capsys.readouterr().out


def test_lm_eval_without_a_server_or_model_name_says_to_pass_it(capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert main(["eval", "lm-eval", url, "--tasks", "hellaswag", "--dry-run"]) == 2
    err = capsys.readouterr().err
    # one line: the cause (connection refused here) and this command's own flags, none of the agent's
    assert err.startswith(f"lmstack eval: error: cannot find the model name at {url}: cannot connect (")
    assert err.endswith("is the server running at that URL?; or pass --model-name\n") and "\n" not in err[:-1]
    assert "--model " not in err and "api_key_env" not in err


def test_lm_eval_adds_the_model_name_fix_only_where_the_message_lacks_it(capsys):
    with ScriptedServer({"scripts": {}}) as empty:
        assert main(["eval", "lm-eval", empty.base_url, "--tasks", "hellaswag", "--dry-run"]) == 2
    assert capsys.readouterr().err == (f"lmstack eval: error: cannot find the model name at {empty.base_url}: "
                                       "the endpoint lists no models; pass --model-name\n")
    # Not a URL: the model name would not help, since the command needs the URL too.
    assert main(["eval", "lm-eval", "ftp://127.0.0.1/v1", "--tasks", "hellaswag", "--dry-run"]) == 2
    assert capsys.readouterr().err == ("lmstack eval: error: 'ftp://127.0.0.1/v1' is not an http(s) URL; "
                                       "pass e.g. http://127.0.0.1:8000/v1\n")


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "temperature must be >= 0 (0 = greedy), got -1.0"),
    (["--max-tokens", "0"], "max_tokens must be >= 1 (the generation limit per model call), got 0"),
    (["--reducers", "mean,pass@0"], "reducer 'pass@0' counts no attempts; use a K of at least 1 (e.g. pass@1)"),
    (["--price", "-1", "2"], "--price -1 2: prices must be >= 0 (dollars per million input and output tokens)"),
])
def test_settings_that_cannot_work_are_refused_before_the_run_exists(tmp_path, capsys, args, message):
    """Each ran before: a negative temperature failed every sample (exit 0), max_tokens 0 asked for empty replies,
    pass@0 scored every sample 1.0 and a negative price paid the run."""
    assert eval_run(tmp_path, *args) == 2
    assert capsys.readouterr().err == f"lmstack eval: error: {message}\n"
    assert Store(tmp_path / "db.sqlite").runs() == []


def test_a_task_file_that_is_not_yaml_is_one_line(tmp_path, capsys):
    (tmp_path / "task.yaml").write_text("name: [\n")
    assert main(["eval", "run", str(tmp_path / "task.yaml"), "--model", "http://127.0.0.1:9/v1", "--model-name", "m",
                 "--db", str(tmp_path / "db.sqlite")]) == 2
    assert capsys.readouterr().err == (f"lmstack eval: error: task file '{tmp_path / 'task.yaml'}' is not valid YAML "
                                       "(expected the node content, but found '<stream end>' at line 2, column 1); "
                                       "fix the file\n")


@pytest.mark.parametrize("alpha", ["0", "1", "2", "-0.1"])
def test_compare_refuses_a_significance_level_outside_0_to_1(tmp_path, capsys, alpha):
    """--alpha 2 called every difference significant, --alpha 0 none; neither said anything."""
    assert main(["eval", "compare", "a", "b", "--alpha", alpha, "--db", str(tmp_path / "db.sqlite")]) == 2
    assert capsys.readouterr().err == (f"lmstack eval: error: --alpha {float(alpha):g}: the significance level must "
                                       "be between 0 and 1 (default 0.05)\n")
