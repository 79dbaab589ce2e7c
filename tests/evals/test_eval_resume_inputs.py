"""`--resume` continues a run with what made its samples: the same model, -T arguments (however they are typed),
scorers and judge. Anything else is refused: the samples left would be answered, built or graded differently from
those the run has, and its scores be a mix (a resume with a changed scorer list gave rows scored 1 of 4 times)."""

import pytest

from eval_helpers import answers, arith_task, tiny_checkpoint
from lmstack.agent.testing.scripted_server import ScriptedServer, free_port
from lmstack.cli import main
from lmstack.evals.store import Store


def test_a_changed_scorer_list_is_refused_and_the_task_as_it_was_resumes(tmp_path, capsys):
    task_file = arith_task(tmp_path, 2)
    db = str(tmp_path / "db.sqlite")
    with ScriptedServer({"scripts": {"good": [{"answers": answers(2)}]}}) as server:
        command = ["eval", "run", str(task_file), "--model", server.base_url, "--model-name", "good", "--db", db]
        assert main([*command, "--run-id", "s"]) == 0
        task_file.write_text(task_file.read_text().replace("scorer: [numeric]", "scorer: [exact, numeric]"))
        capsys.readouterr()
        assert main([*command, "--resume", "s"]) == 2
        assert capsys.readouterr().err == (
            "lmstack eval: error: --resume s: the run is scored by numeric, and the task now by exact, numeric; resume "
            "it with the task's scorers as they were, or start a new run (without --resume)\n")
        task_file.write_text(task_file.read_text().replace("scorer: [exact, numeric]", "scorer: [numeric]"))
        assert main([*command, "--resume", "s"]) == 0


def test_another_checkpoint_of_the_same_name_is_refused(tmp_path, capsys):
    first, second = tiny_checkpoint(tmp_path / "a"), tiny_checkpoint(tmp_path / "b")  # both named 'tiny'
    db = str(tmp_path / "db.sqlite")
    command = ["eval", "run", "hallucination_detection", "--db", db]  # calls no model: quick
    assert main([*command, "--model", str(first), "--run-id", "m"]) == 0
    capsys.readouterr()
    assert main([*command, "--model", str(second), "--resume", "m"]) == 2
    assert capsys.readouterr().err == (
        f"lmstack eval: error: --resume m: the run's model is checkpoint '{first}' (its weights as they were then), "
        f"not checkpoint '{second}' (its weights as they were then); pass the run's own --model to resume it, or "
        "start a new run (without --resume)\n")
    assert main([*command, "--model", str(first), "--resume", "m"]) == 0


def test_task_arguments_are_compared_as_values_not_as_typed(tmp_path, capsys):
    checkpoint = tiny_checkpoint(tmp_path)
    db = str(tmp_path / "db.sqlite")
    command = ["eval", "run", "hallucination_detection", "--model", str(checkpoint), "--db", db]
    assert main([*command, "-T", "monitors=[grounding, uncertainty]", "-T", "seed=01", "--run-id", "h"]) == 0
    for same in (["-T", "monitors=grounding,uncertainty", "-T", "seed=1"],
                 ["-T", "monitors=['grounding', \"uncertainty\"]", "-T", "seed=1"]):
        assert main([*command, *same, "--resume", "h"]) == 0
    capsys.readouterr()
    assert main([*command, "-T", "monitors=grounding", "-T", "seed=1", "--resume", "h"]) == 2
    assert ("the run was built with -T monitors=grounding,uncertainty, not -T monitors=grounding;"  # what differs
            in capsys.readouterr().err)


@pytest.mark.parametrize("flags, says", [
    (["--run-id", "x", "--resume", "r"], "--run-id names a new run and --resume continues run 'r': pass one of them"),
    (["--judge-name", "j"], "--judge-name is the judge's model name at its --judge URL: pass --judge URL too"),
    (["--model-name", "m"], "--model-name is the model name to request from a URL; '{ckpt}' is a checkpoint, known by "
                            "its folder's name: drop --model-name"),
    (["--run-id", "team/nightly"], "--run-id 'team/nightly': use 1 to 128 letters, digits, '.', '_' or '-', "
                                   "beginning with a letter or digit (the id is part of the dashboard's URLs, and an "
                                   "agent run's workspace folder)"),
])
def test_a_flag_that_would_be_ignored_or_a_run_id_the_dashboard_cannot_open_is_refused(tmp_path, capsys, flags, says):
    checkpoint = tiny_checkpoint(tmp_path)
    db = tmp_path / "db.sqlite"
    assert main(["eval", "run", "hallucination_detection", "--model", str(checkpoint), *flags, "--db", str(db)]) == 2
    assert capsys.readouterr().err == f"lmstack eval: error: {says.format(ckpt=checkpoint)}\n"
    assert not db.exists() or Store(db).runs() == []


def test_a_judge_that_cannot_be_reached_or_built_is_named_as_the_judge(tmp_path, capsys):
    """Both said `--model ...`, the flag of the model that was fine."""
    checkpoint = tiny_checkpoint(tmp_path)
    command = ["eval", "run", "hallucination_detection", "--model", str(checkpoint), "--db", str(tmp_path / "db")]
    url = f"http://127.0.0.1:{free_port()}/v1"
    assert main([*command, "--judge", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lmstack eval: error: --judge {url}: cannot connect (") and "--model" not in err
    assert main([*command, "--judge", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith(f"lmstack eval: error: --judge '{tmp_path / 'nowhere'}': expected an "
                                              "http(s):// base URL")


@pytest.mark.parametrize("item, says", [("split", "-T 'split': expected KEY=VALUE, e.g. -T split=test"),
                                        ("=3", "-T '=3': expected KEY=VALUE with a key, e.g. -T split=test")])
def test_a_task_argument_without_a_key_is_refused(tmp_path, capsys, item, says):
    assert main(["eval", "run", "hallucination_detection", "--model", "http://127.0.0.1:9/v1", "-T", item,
                 "--db", str(tmp_path / "db")]) == 2
    assert capsys.readouterr().err == f"lmstack eval: error: {says}\n"
