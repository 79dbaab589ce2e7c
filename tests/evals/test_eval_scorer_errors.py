"""Scorer errors on the command line: a model_graded task without --judge is refused before a run is recorded
(it used to record a run whose every score failed, said only in the HTML report), and the errors of a scorer that
does fail are counted in its row, in the run's line and by the first-error line, as sample errors are."""

import json

from cli_testing import one_line_error
from eval_helpers import answers, question
from lmstack.agent.testing.scripted_server import ScriptedServer, free_port
from lmstack.evals.store import Store


def task_file(folder, scorers: str, targets: list[str]):
    (folder / "rows.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "input": question(i), "target": target})
                                               + "\n" for i, target in enumerate(targets)))
    path = folder / "graded.yaml"
    path.write_text(f"name: graded\ndataset: rows.jsonl\nsolver: [generate]\nscorer: {scorers}\n")
    return path


def test_model_graded_without_a_judge_is_refused_before_a_run(tmp_path, cli):
    path = task_file(tmp_path, "[numeric, model_graded]", ["3", "5", "7"])
    db = tmp_path / "db.sqlite"
    done = cli("eval", "run", path, "--model", f"http://127.0.0.1:{free_port()}/v1", "--model-name", "m", "--db", db)
    assert one_line_error(done, "eval") == ("lmstack eval: error: task 'graded': scorer 'model_graded' needs a judge "
                                            "model to grade with; pass --judge URL_OR_CHECKPOINT")
    assert Store(db).runs() == []


def table_row(stdout: str, scorer: str) -> list[str]:
    return next(line.split() for line in stdout.splitlines() if line.split()[3:4] == [scorer])


def test_scorer_errors_are_counted_and_the_first_is_shown(tmp_path, cli):
    # q1's target is not a number: the numeric scorer raises on it; includes scores it.
    path = task_file(tmp_path, "[numeric, includes]", ["3", "five", "7"])
    with ScriptedServer({"scripts": {"m": [{"answers": answers(3)}]}}) as server:
        done = cli("eval", "run", path, "--model", server.base_url, "--model-name", "m", "--run-id", "r",
                   "--db", tmp_path / "db.sqlite")
    assert done.returncode == 0, done.stderr[-2000:]
    numeric, includes = table_row(done.stdout, "numeric"), table_row(done.stdout, "includes")
    # columns: run task model scorer reducer mean [ci_low, ci_high] n err tokens cost
    assert (numeric[8], numeric[9]) == ("2", "1") and (includes[8], includes[9]) == ("3", "0"), done.stdout
    assert "run r: 3 results, 0 errors, 1 scorer errors; model requests" in done.stdout
    assert ("first error (sample q1, epoch 0): scorer 'numeric' failed: ValueError: sample q1: target 'five' is not "
            "a number; --resume r retries") in done.stderr, done.stderr[-2000:]
