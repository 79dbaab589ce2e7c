"""`lmstack eval compare --fail-on-regression`: a planted regression fails the gate, seed noise does not."""

import re

import pytest

from eval_helpers import answers, write_dataset
from lmstack.agent.testing.scripted_server import ScriptedServer
from lmstack.cli import main
from lmstack.evals.compare import compare_runs
from lmstack.evals.store import Store

N = 60


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    write_dataset(tmp / "arith.jsonl", N)
    task = tmp / "arith.yaml"
    task.write_text("name: arith\ndataset: arith.jsonl\nsolver: [generate]\nscorer: [numeric, includes]\n")
    db = str(tmp / "db.sqlite")
    # Both models answer by the request's seed, right 3 times in 4; the worse one is also always wrong
    # on every other question (the planted regression).
    script = {"scripts": {"base": [{"answers": answers(N, noisy=True)}],
                          "worse": [{"answers": answers(N, wrong_every=2, noisy=True)}]}}
    with ScriptedServer(script) as server:
        for run_id, name, seed in [("base-s1", "base", 1), ("base-s2", "base", 2), ("worse-s1", "worse", 1)]:
            assert main(["eval", "run", str(task), "--model", server.base_url, "--model-name", name, "--seed", str(seed),
                         "--temperature", "0.8", "--run-id", run_id, "--db", db]) == 0
    return db


def test_planted_regression_fails_the_gate(runs, capsys):
    assert main(["eval", "compare", "base-s1", "worse-s1", "--fail-on-regression", "--db", runs]) == 1
    out = capsys.readouterr()
    assert "REGRESSION" in out.out and "flip q" in out.out and "significant regression" in out.err
    comparison = compare_runs(Store(runs), "base-s1", "worse-s1")
    numeric = next(s for s in comparison.scorers if s.scorer == "numeric")
    assert numeric.test == "mcnemar" and numeric.p_value < 0.001 and numeric.diff < -0.2
    flipped = [int(line.split()[1][1:-1]) for line in out.out.splitlines() if line.startswith("    flip q")]
    assert flipped[:20] == sorted(flipped[:20])  # per scorer, by number: q2 before q10 (q10 came first as text)
    # the reverse direction is an improvement, which never fails the gate
    assert main(["eval", "compare", "worse-s1", "base-s1", "--fail-on-regression", "--db", runs]) == 0


def test_an_unfinished_candidate_fails_the_gate(runs, tmp_path, capsys):
    """A crashed candidate passed the gate on the few samples it had scored."""
    store = Store(runs)
    store.fail_run("base-s2", "stopped by Ctrl-C (KeyboardInterrupt); continue it with --resume base-s2")
    try:
        assert main(["eval", "compare", "base-s1", "base-s2", "--db", runs]) == 0
        assert "B = base-s2 (arith on base): failed" in capsys.readouterr().out
        assert main(["eval", "compare", "base-s1", "base-s2", "--fail-on-regression", "--db", runs]) == 1
        assert capsys.readouterr().err == ("run base-s2 has not finished (failed): a gate compares finished runs; "
                                           "continue it with `lmstack eval run ... --resume base-s2`\n")
    finally:
        store.finish_run("base-s2", store.run("base-s2").summary)


def test_same_model_different_seeds_passes_the_gate(runs, capsys):
    assert main(["eval", "compare", "base-s1", "base-s2", "--fail-on-regression", "--db", runs]) == 0
    comparison = compare_runs(Store(runs), "base-s1", "base-s2")
    numeric = next(s for s in comparison.scorers if s.scorer == "numeric")
    assert numeric.flips and numeric.p_value > 0.05  # outcomes differ sample by sample, but not significantly


def test_the_table_columns_fit_a_long_scorer_name(tmp_path, capsys):
    """The built-in toolcalls task's `toolcall_right_tool` is longer than the scorer column was (16): its row's
    numbers sat under the wrong headers."""
    db = str(tmp_path / "db.sqlite")
    script = {"scripts": {name: [{"content": "No tool needed."}] * 16 for name in ("a", "b")}}
    with ScriptedServer(script) as server:
        for name in ("a", "b"):
            assert main(["eval", "run", "toolcalls", "-T", "n=2", "--model", server.base_url, "--model-name", name,
                         "--run-id", name, "--db", db]) == 0
    capsys.readouterr()
    assert main(["eval", "compare", "a", "b", "--db", db]) == 0
    header, *rows = [line for line in capsys.readouterr().out.splitlines()[2:] if not line.startswith("    ")]
    assert [row.split()[0] for row in rows] == ["toolcall", "toolcall_parsed", "toolcall_right_tool"]

    def spans(line: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", line)]

    # scorer and test are left-aligned (same start as the header), n, A, B, B-A and p right-aligned (same end)
    for row in rows:
        assert [spans(row)[i][0] for i in (0, 6)] == [spans(header)[i][0] for i in (0, 6)], (header, row)
        assert [spans(row)[i][1] for i in range(1, 6)] == [spans(header)[i][1] for i in range(1, 6)], (header, row)


def test_report_command_writes_one_html_file(runs, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["eval", "report", "base-s1", "worse-s1", "-o", str(out), "--db", runs]) == 0
    html = out.read_text()
    assert html.count("<h2>Run ") == 2 and "data:image/png;base64," in html and "<script" not in html
    assert main(["eval", "report", "nope", "--db", runs]) == 2
    assert "no eval run 'nope'" in capsys.readouterr().err


def test_list_shows_builtin_tasks_and_runs(runs, capsys):
    assert main(["eval", "list", "--db", runs]) == 0
    out = capsys.readouterr().out
    for name in ("val_bpb", "toolcalls", "hallucination_detection", "arithmetic_agent", "base-s1", "worse-s1"):
        assert name in out


def test_lm_eval_adapter_prints_the_local_completions_command(capsys):
    assert main(["eval", "lm-eval", "http://127.0.0.1:8000/v1", "--tasks", "hellaswag,arc_easy", "--tokenizer",
                 "runs/export", "--limit", "5", "--model-name", "final", "--dry-run"]) == 0
    command = capsys.readouterr().out.strip()
    assert command.startswith("lm_eval --model local-completions --tasks hellaswag,arc_easy --model_args model=final,")
    assert "base_url=http://127.0.0.1:8000/v1/completions" in command and "tokenizer=runs/export" in command
    assert command.endswith("--limit 5") and "max_length=" not in command  # with --model-name nothing is listed
    assert main(["eval", "lm-eval", "http://127.0.0.1:8000/v1", "--tasks", "hellaswag", "--model-name", "final",
                 "--max-length", "256", "--timeout", "30", "--dry-run"]) == 0
    assert ",max_length=256,timeout=30," in capsys.readouterr().out
    assert main(["eval", "lm-eval", "http://127.0.0.1:8000/v1", "--tasks", "hellaswag", "--model-name", "final",
                 "--timeout", "0", "--dry-run"]) == 2
    assert capsys.readouterr().err == "lmstack eval: error: --timeout 0: must be at least 1\n"
