"""`lmstack eval run --timeout SECONDS`: how long one HTTP request may take (the client's 60 s applied to every
model before, however slow). A model slower than it fails its samples with an error naming the timeout and the
fix; the timeout is checked before anything is created, recorded with the run (the judge's too), and kept when the
run is resumed without one."""

import pytest

from eval_helpers import answers, arith_task, tiny_checkpoint, write_dataset
from lmstack.agent.client import RetryPolicy
from lmstack.agent.testing.scripted_server import ScriptedServer, free_port
from lmstack.cli import main
from lmstack.evals.store import Store

TIMED_OUT = "(no answer within the 0.2 s timeout; pass a larger --timeout SECONDS); --resume slow retries"


@pytest.fixture
def no_backoff(monkeypatch):
    """A timed-out request retried at once: the client's backoff between its 4 attempts (~2 s a request, twice a
    test) is not what these tests check, and their commands run in this process, where it can be left out."""
    monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt: 0.0)


@pytest.mark.timeout(180)
def test_a_model_slower_than_the_timeout_names_it_and_a_larger_one_succeeds(tmp_path, cli, no_backoff):
    task_file = arith_task(tmp_path, 2)
    db = tmp_path / "db.sqlite"
    # Any delay over the timeout times out, however loaded the machine: a slower one only answers later still.
    with ScriptedServer({"scripts": {"slow": [{"answers": answers(2), "delay_s": 0.5}]}}) as server:
        def eval_run(*extra):
            return cli("eval", "run", task_file, "--model", server.base_url, "--model-name", "slow", "--db", db, *extra)

        short = eval_run("--timeout", "0.2", "--run-id", "slow")
        assert short.returncode == 0 and "run slow: 2 results, 2 errors" in short.stdout, short.stderr[-2000:]
        assert TIMED_OUT in short.stderr
        # every request counted: a run whose requests all failed made them ("0 requests made" before)
        assert "model requests: 0 answered by the endpoint, 0 from the cache, 2 failed" in short.stdout
        kept = eval_run("--resume", "slow")  # the run's own 0.2 s, not the default 60 s that would have waited
        assert "run slow: 2 results, 2 errors" in kept.stdout and TIMED_OUT in kept.stderr, kept.stderr[-2000:]
        generous = eval_run("--resume", "slow", "--timeout", "10")
        assert generous.returncode == 0 and "run slow: 2 results, 0 errors" in generous.stdout, generous.stderr
        assert "first error" not in generous.stderr
        assert "model requests: 2 answered by the endpoint, 0 from the cache, 0 failed" in generous.stdout
    run = Store(db).run("slow")
    assert (run.status, run.config["timeout_s"]) == ("finished", 10)
    assert run.summary["scores"]["numeric"]["mean"]["mean"] == 1.0


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_a_timeout_that_cannot_work_is_refused_creating_nothing(tmp_path, capsys, value):
    db = tmp_path / "new" / "db.sqlite"
    assert main(["eval", "run", "toolcalls", "--model", f"http://127.0.0.1:{free_port()}/v1", "--model-name", "m",
                 "--db", str(db), "--timeout", value]) == 2
    assert capsys.readouterr().err == (f"lmstack eval: error: --timeout {float(value):g}: must be a number of seconds "
                                       "> 0 (how long one HTTP request may take; default 60)\n")
    assert not (tmp_path / "new").exists()  # neither the database nor its folder


def test_a_timeout_for_an_in_process_model_is_refused(tmp_path, capsys):
    db = tmp_path / "new" / "db.sqlite"
    assert main(["eval", "run", "toolcalls", "--model", str(tmp_path), "--db", str(db), "--timeout", "5"]) == 2
    assert capsys.readouterr().err == (f"lmstack eval: error: --timeout 5: only a model at an http(s) URL has one; "
                                       f"--model '{tmp_path}' runs in-process, so drop --timeout\n")
    assert not (tmp_path / "new").exists()


@pytest.mark.timeout(180)
def test_the_judges_timeout_is_recorded_when_the_model_runs_in_process(tmp_path, no_backoff):
    """--timeout applies to the judge at a URL when the model runs in-process: the run recorded None (the model's)
    before, and a resume gave the judge the default 60 s."""
    write_dataset(tmp_path / "one.jsonl", 1)
    task_file = tmp_path / "judged.yaml"
    task_file.write_text("name: judged\ndataset: one.jsonl\nsolver: [generate]\nscorer: [model_graded]\n"
                         "config: {max_tokens: 4}\n")
    db = tmp_path / "db.sqlite"

    def judge_error() -> str | None:
        return Store(db).samples("judged")[0].scores["model_graded"].get("error")

    with ScriptedServer({"scripts": {"judge": [{"content": "GRADE: C", "delay_s": 0.5}]}}) as server:
        command = ["eval", "run", str(task_file), "--model", str(tiny_checkpoint(tmp_path)), "--judge",
                   server.base_url, "--judge-name", "judge", "--db", str(db)]
        assert main([*command, "--timeout", "0.3", "--run-id", "judged"]) == 0
        assert Store(db).run("judged").config["timeout_s"] == 0.3
        assert "no answer within the 0.3 s timeout" in judge_error()
        assert main([*command, "--resume", "judged"]) == 0  # the judge keeps the run's 0.3 s: it times out again
        assert "no answer within the 0.3 s timeout" in judge_error()
        assert main([*command, "--resume", "judged", "--timeout", "5"]) == 0
    assert judge_error() is None and Store(db).run("judged").config["timeout_s"] == 5
