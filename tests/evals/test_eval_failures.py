"""Failure sweep: user mistakes in task files, Ctrl-C mid-run, a judge endpoint that was down, and
comparisons that cannot be paired. Each ends in a one-line error naming the cause and the fix, or in a
run that `--resume` completes; none leaves a half-made run in the database."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from cli_testing import default_sigint
from eval_helpers import answers, arith_task, question, write_dataset
from lmstack.agent.client import OpenAIClient, RetryPolicy
from lmstack.agent.testing.scripted_server import ScriptedServer, free_port
from lmstack.cli import main
from lmstack.evals.code_scorers import model_graded
from lmstack.evals.compare import compare_runs
from lmstack.evals.dataset import load_jsonl
from lmstack.evals.model import CachedModel
from lmstack.evals.runner import run_eval
from lmstack.evals.scorers import numeric
from lmstack.evals.solvers import generate
from lmstack.evals.store import Store
from lmstack.evals.task import Task

TASK_FILES = {
    "syntax.py": ("from lmstack.evals.task import task\n@task\ndef t(:\n    pass\n", "syntax.py' line 3: invalid syntax"),
    "raises.py": ("from lmstack.evals.task import task\n@task\ndef t():\n    raise RuntimeError('download failed')\n",
                  "RuntimeError: download failed ({dir}/raises.py line 4, in t); fix the task function"),
    "import.py": ("import no_such_module_here\n", "ModuleNotFoundError: No module named 'no_such_module_here'"),
    "empty.py": ("from lmstack.evals.task import Task, task\nfrom lmstack.evals.solvers import generate\n"
                 "from lmstack.evals.scorers import exact\n@task\ndef t():\n"
                 "    return Task(dataset=[], solver=generate(), scorer=exact())\n", "task 't' has no samples"),
    "empty.yaml": ("dataset: empty.jsonl\nscorer: [exact]\n", "task 'empty' has no samples"),
    "regex.yaml": ("dataset: rows.jsonl\nscorer: [{regex_match: {pattern: '('}}]\n",
                   "scorer 'regex_match': pattern '(' is not a valid regular expression (missing ), unterminated "
                   "subpattern at position 0); fix its arguments"),
    "few_shot.yaml": ("dataset: rows.jsonl\nsolver: [{few_shot: {examples: oops}}, generate]\nscorer: [exact]\n",
                      "few_shot.yaml': solver 'few_shot': examples must be a list of [question, answer] pairs"),
    "kwargs.yaml": ("dataset: rows.jsonl\nscorer: [{exact: 5}]\n", "scorer 'exact': arguments must be a mapping"),
    "config.yaml": ("dataset: rows.jsonl\nscorer: [exact]\nconfig: {epochs: many}\n",
                    "config.yaml': config key 'epochs': expected an integer, got 'many'"),
    "fields.yaml": ("dataset: rows.jsonl\nfields: [input]\nscorer: [exact]\n", "'fields' must be a mapping"),
    "input_field.yaml": ("dataset: rows.jsonl\nfields: {input: question}\nscorer: [exact]\n",
                         "task 'input_field': no row of its dataset can be run, so no run was recorded; the first: "
                         "rows.jsonl line 1: no 'question' field; add one"),
}


@pytest.mark.parametrize("name", sorted(TASK_FILES))
def test_task_file_mistakes_are_one_line_errors_and_record_no_run(name, tmp_path, cli):
    text, says = TASK_FILES[name]
    (tmp_path / name).write_text(text)
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "rows.jsonl").write_text('{"input": "hi", "target": "x"}\n')
    db = tmp_path / "db.sqlite"
    run = cli("eval", "run", tmp_path / name, "--model", f"http://127.0.0.1:{free_port()}/v1", "--model-name", "m",
              "--db", db)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert says.format(dir=tmp_path) in run.stderr.strip().splitlines()[-1]
    assert Store(db).runs() == []


def eval_command(task_file, base_url, db, *extra):
    return ["eval", "run", str(task_file), "--model", base_url, "--model-name", "slow", "--max-concurrency", "2",
            "--db", str(db), *extra]


@pytest.mark.timeout(180)
def test_ctrl_c_marks_the_run_failed_and_resume_finishes_it(tmp_path, cli):
    n = 30
    task_file = arith_task(tmp_path, n)
    db = tmp_path / "db.sqlite"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # 0.5 s an answer, 2 at a time: ~7 s of run in which to interrupt it, even on a busy machine.
    with ScriptedServer({"scripts": {"slow": [{"answers": answers(n), "delay_s": 0.5}]}}) as server:
        # A real process: the test sends it the SIGINT of a Ctrl-C.
        process = subprocess.Popen([sys.executable, "-m", "lmstack.cli",
                                    *eval_command(task_file, server.base_url, db, "--run-id", "stopped")], env=env,
                                   preexec_fn=default_sigint,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:  # reads, never waits long
                    if conn.execute("SELECT COUNT(*) FROM eval_samples").fetchone()[0] >= 4:
                        break
            except sqlite3.OperationalError:  # tables not made yet
                pass
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before the test could interrupt it"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 130, stderr[-2000:]
        assert "continue it with --resume stopped" in stderr
        run = Store(db).run("stopped")
        # Not 'running' forever in `eval list`; nor 'interrupted', which says its process died without a word.
        assert (run.status, run.error) == ("failed", "stopped by Ctrl-C (KeyboardInterrupt); continue it with "
                                                     "--resume stopped")
        assert 4 <= len(Store(db).samples("stopped")) < n

        # All the rest at once: at 2 at a time, the resume took ~7 s more.
        resumed = cli(*eval_command(task_file, server.base_url, db, "--resume", "stopped", "--max-concurrency", n))
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    run = Store(db).run("stopped")
    assert (run.status, run.error) == ("finished", None)
    assert run.summary["scores"]["numeric"]["mean"]["n"] == n


def test_scorer_errors_from_a_judge_that_was_down_are_retried_on_resume(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    n = 4
    task = Task(dataset=load_jsonl(write_dataset(tmp_path / "d.jsonl", n)), solver=generate(),
                scorer=[numeric(), model_graded()], name="arith")
    script = {"scripts": {"good": [{"answers": answers(n)}], "judge": [{"content": "GRADE: C"}]}}
    with ScriptedServer(script) as server:
        model = CachedModel(OpenAIClient(server.base_url, "good"), store)
        dead = CachedModel(OpenAIClient(f"http://127.0.0.1:{free_port()}/v1", "judge",
                                        retry=RetryPolicy(max_attempts=1)), store)
        first = run_eval(task, model, store, judge=dead, run_id="judged", progress=False)
        assert first.summary["scorer_errors"] == n and first.summary["scores"]["model_graded"]["mean"]["n"] == 0
        judge = CachedModel(OpenAIClient(server.base_url, "judge"), store)
        asked_before = sum(1 for r in server.requests() if r["model"] == "good")
        resumed = run_eval(task, CachedModel(OpenAIClient(server.base_url, "good"), store), store, judge=judge,
                           resume="judged", progress=False)
        asked_after = sum(1 for r in server.requests() if r["model"] == "good")
    assert resumed.summary["scorer_errors"] == 0
    assert resumed.summary["scores"]["model_graded"]["mean"]["mean"] == 1.0
    assert resumed.summary["scores"]["model_graded"]["mean"]["n"] == n
    assert asked_after == asked_before  # the evaluated model's answers came from the cache


def test_compare_refuses_runs_whose_ids_name_different_samples(tmp_path, capsys):
    store = Store(tmp_path / "db.sqlite")
    write_dataset(tmp_path / "a.jsonl", 3)
    other = tmp_path / "b.jsonl"  # the same ids q0..q2, other questions: a different dataset
    other.write_text("".join(f'{{"id": "q{i}", "input": "{question(i + 10)}", "target": "{2 * (i + 10) + 3}"}}\n'
                             for i in range(3)))
    with ScriptedServer({"scripts": {"good": [{"answers": answers(13)}]}}) as server:
        for run_id, path in [("a", tmp_path / "a.jsonl"), ("b", other), ("a2", tmp_path / "a.jsonl")]:
            data = load_jsonl(path)[: 2 if run_id == "a2" else 3]
            run_eval(Task(dataset=data, solver=generate(), scorer=numeric(), name="arith"),
                     CachedModel(OpenAIClient(server.base_url, "good"), store), store, run_id=run_id, progress=False)
    assert main(["eval", "compare", "a", "b", "--db", store.path]) == 2
    assert "sample 'q0' (and 2 more) has a different input or target" in capsys.readouterr().err
    assert main(["eval", "compare", "a", "a2", "--db", store.path]) == 0
    assert "compared on the 2 samples scored in both runs (A scored 3, B 2)" in capsys.readouterr().out
    assert compare_runs(store, "a", "a2").scorers[0].n == 2
