"""`eval run --resume RUN` keeps the run's own settings, so one it would ignore is refused: before, `--resume RUN
--max-tokens 16` (what a "lower max_tokens" sample error suggests) silently sent the run's max_tokens again. The
same settings as the run's are accepted, so its first command line works with --resume added."""

import pytest

from cli_testing import one_line_error, run_cli
from eval_helpers import answers, arith_task
from lmstack.agent.testing.scripted_server import ScriptedServer
from lmstack.cli import main
from lmstack.evals.store import Store

RUN_SETTINGS = ["--max-tokens", "16", "--temperature", "0.5", "--epochs", "2", "--seed", "3", "--limit", "2",
                "--reducers", "mean,max"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run 'r' with every setting given, a run 'bare' with none, and the command line that made them
    (without the settings and --run-id)."""
    tmp = tmp_path_factory.mktemp("resume-settings")
    task_file = arith_task(tmp, 2)
    db = tmp / "db.sqlite"
    with ScriptedServer({"scripts": {"good": [{"answers": answers(2)}]}}) as server:
        command = ["eval", "run", str(task_file), "--model", server.base_url, "--model-name", "good", "--db", str(db)]
        assert main([*command, *RUN_SETTINGS, "--run-id", "r"]) == 0
        assert main([*command, "--run-id", "bare"]) == 0
    return command, db


def test_a_new_max_tokens_on_resume_is_refused_in_one_line_and_the_runs_own_is_accepted(finished_run, capsys):
    command, db = finished_run
    done = run_cli(*command, "--resume", "r", "--max-tokens", "8")
    assert one_line_error(done, "eval") == (
        "lmstack eval: error: --resume r: a resumed run keeps its own settings (max_tokens=16), so --max-tokens 8 "
        "would be ignored; drop it to resume, or start a new run (without --resume) with --max-tokens 8")
    assert Store(db).run("r").status == "finished"  # untouched
    assert main([*command, *RUN_SETTINGS, "--resume", "r"]) == 0
    assert "run r: 4 results, 0 errors" in capsys.readouterr().out  # 2 samples x 2 epochs


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
