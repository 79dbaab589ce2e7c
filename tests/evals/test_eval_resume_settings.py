"""`eval run --resume RUN` keeps the run's own settings, so one it would ignore is refused: before, `--resume RUN
--max-tokens 16` (what a "lower max_tokens" sample error suggests) silently sent the run's max_tokens again. The
same settings as the run's are accepted, so its first command line works with --resume added."""

import json

import pytest

from cli_testing import one_line_error
from eval_helpers import answers, arith_task
from lmstack.agent.testing.scripted_server import ScriptedServer
from lmstack.cli import main
from lmstack.db import transaction
from lmstack.evals.store import Store

RUN_SETTINGS = ["--max-tokens", "16", "--temperature", "0.5", "--epochs", "2", "--seed", "3", "--limit", "2",
                "--reducers", "mean,max"]


@pytest.fixture(scope="module")
def server():
    """The model of every test here, answering the 2 questions: one server for all, as each start of one is a new
    interpreter's."""
    with ScriptedServer({"scripts": {"good": [{"answers": answers(2)}]}}) as server:
        yield server


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, server):
    """A finished run 'r' with every setting given, a run 'bare' with none, and the command line that made them
    (without the settings and --run-id)."""
    tmp = tmp_path_factory.mktemp("resume-settings")
    task_file = arith_task(tmp, 2)
    db = tmp / "db.sqlite"
    command = ["eval", "run", str(task_file), "--model", server.base_url, "--model-name", "good", "--db", str(db)]
    assert main([*command, *RUN_SETTINGS, "--run-id", "r"]) == 0
    assert main([*command, "--run-id", "bare"]) == 0
    return command, db


def test_a_new_max_tokens_on_resume_is_refused_in_one_line_and_the_runs_own_is_accepted(finished_run, cli):
    command, db = finished_run
    done = cli(*command, "--resume", "r", "--max-tokens", "8")
    assert one_line_error(done, "eval") == (
        "lmstack eval: error: --resume r: a resumed run keeps its own settings (max_tokens=16), so --max-tokens 8 "
        "would be ignored; drop it to resume, or start a new run (without --resume) with --max-tokens 8")
    assert Store(db).run("r").status == "finished"  # untouched
    resumed = cli(*command, *RUN_SETTINGS, "--resume", "r")
    assert resumed.returncode == 0 and "run r: 4 results, 0 errors" in resumed.stdout  # 2 samples x 2 epochs


@pytest.mark.parametrize("flag, value, kept", [
    ("--temperature", "0.7", "temperature=0.5"), ("--epochs", "1", "epochs=2"), ("--seed", "0", "seed=3"),
    ("--limit", "1", "limit=2"), ("--reducers", "mean", "reducers=mean,max")])
def test_every_other_setting_the_run_keeps_is_refused_on_resume(finished_run, capsys, flag, value, kept):
    command, _ = finished_run
    assert main([*command, "--resume", "r", flag, value]) == 2
    assert f"--resume r: a resumed run keeps its own settings ({kept}), so {flag} {value} would be ignored" in \
        capsys.readouterr().err



@pytest.mark.parametrize("flag, value, kept", [("--max-tokens", "8", "max_tokens unset: the endpoint's default"),
                                               ("--limit", "1", "limit unset: every sample")])
def test_a_setting_the_run_left_unset_is_named_as_such(finished_run, capsys, flag, value, kept):
    command, _ = finished_run  # "max_tokens=None" before
    assert main([*command, "--resume", "bare", flag, value]) == 2
    assert f"--resume bare: a resumed run keeps its own settings ({kept}), so {flag} {value} would be ignored" in \
        capsys.readouterr().err


PYTHON_TASK = """
from lmstack.evals.dataset import load_jsonl
from lmstack.evals.scorers import numeric
from lmstack.evals.solvers import generate
from lmstack.evals.task import Task, task


@task
def arith(n: int = 2):
    return Task(dataset=load_jsonl("arith.jsonl")[:n], solver=generate(), scorer=numeric())
"""


@pytest.fixture
def python_task(tmp_path, server):
    """The command line of PYTHON_TASK (n defaults to 2) against the scripted server, the task file, the server's URL
    and the database."""
    arith_task(tmp_path, 2)  # the dataset
    task_file = tmp_path / "tasks.py"
    task_file.write_text(PYTHON_TASK)
    db = tmp_path / "db.sqlite"
    return (["eval", "run", f"{task_file}@arith", "--model", server.base_url, "--model-name", "good", "--db", db],
            task_file, server.base_url, db)


def test_other_task_arguments_or_another_judge_on_resume_are_refused(python_task, cli):
    """The samples left would be built or graded differently from those the run has: its scores would be a mix."""
    command, _, url, db = python_task
    assert cli(*command, "-T", "n=1", "--run-id", "t").returncode == 0
    for other, given in [(["-T", "n=2"], "-T n=2"), ([], "-T n=2 (its default)")]:
        done = cli(*command, *other, "--resume", "t")
        assert done.returncode == 2
        assert (f"--resume t: the run was built with -T n=1, not {given}; pass the run's own -T arguments to resume it, "
                "or start a new run (without --resume)") in done.stderr
    judged = cli(*command, "-T", "n=1", "--resume", "t", "--judge", url, "--judge-name", "good")
    assert "--resume t: the run was graded with no --judge, not judge model 'good'; pass the run's own --judge" in \
        judged.stderr
    assert cli(*command, "-T", "n=1", "--resume", "t").returncode == 0  # the run's own arguments
    assert Store(db).run("t").status == "finished"


def test_a_task_argument_given_as_its_default_is_the_same_setting_on_resume(python_task, cli):
    """`-T n=2`, where 2 is n's default, builds the task no -T builds: a resume may give it or leave it out. It was
    refused as other arguments ("built with no -T arguments, not -T n=2")."""
    command, *_ = python_task
    assert cli(*command, "--run-id", "bare").returncode == 0
    assert cli(*command, "-T", "n=2", "--run-id", "given").returncode == 0
    for run_id, other in [("bare", ["-T", "n=2"]), ("given", [])]:
        resumed = cli(*command, *other, "--resume", run_id)
        assert resumed.returncode == 0, resumed.stderr
        assert f"run {run_id}: 2 results, 0 errors" in resumed.stdout
    refused = cli(*command, "-T", "n=1", "--resume", "bare")
    assert refused.returncode == 2 and "--resume bare: the run was built with -T n=2, not -T n=1;" in refused.stderr


def test_a_default_changed_since_the_run_is_another_argument(python_task, cli):
    """A run records its function's defaults with its -T arguments: after the task's default changes, a resume with no
    -T would build the task differently from the run."""
    command, task_file, *_ = python_task
    assert cli(*command, "--run-id", "r").returncode == 0
    task_file.write_text(PYTHON_TASK.replace("n: int = 2", "n: int = 1"))
    refused = cli(*command, "--resume", "r")
    assert refused.returncode == 2
    assert "--resume r: the run was built with -T n=2, not -T n=1 (its default);" in refused.stderr
    assert cli(*command, "-T", "n=2", "--resume", "r").returncode == 0


def test_a_run_recorded_with_its_given_task_arguments_alone_takes_the_defaults_for_the_others(python_task, cli):
    """Runs recorded before the defaults were kept hold only the -T arguments given: the rest were the defaults."""
    command, _, _, db = python_task
    assert cli(*command, "--run-id", "old").returncode == 0
    store = Store(db)
    config = {**store.run("old").config, "task_args": {}}
    with transaction(store.conn):
        store.conn.execute("UPDATE eval_runs SET config = ? WHERE id = 'old'", (json.dumps(config),))
    assert cli(*command, "-T", "n=2", "--resume", "old").returncode == 0
    refused = cli(*command, "-T", "n=1", "--resume", "old")
    assert refused.returncode == 2 and "the run was built with -T n=2, not -T n=1;" in refused.stderr


def test_a_yaml_task_refuses_task_arguments_it_would_ignore(tmp_path, cli):
    task_file = arith_task(tmp_path, 2)
    done = cli("eval", "run", str(task_file), "--model", "http://127.0.0.1:9/v1", "-T", "limit=1",
               "--db", str(tmp_path / "db.sqlite"))
    assert one_line_error(done, "eval") == (
        f"lmstack eval: error: task file '{task_file}' is YAML, which takes no -T arguments (got limit); set the "
        "values in the file, or write a Python task whose function takes them")
    assert not (tmp_path / "db.sqlite").exists()
