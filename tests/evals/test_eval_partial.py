"""A run that has not finished shows the scores of the samples it has, marked partial (`partial: 2/4 samples,
failed`), in `eval list` and `eval report`, as Inspect shows the scores of the samples done; before, it showed none.
A sample counts once all its epochs are stored. (`compare --fail-on-regression` still fails an unfinished run:
test_eval_compare.py.)"""

import re

from eval_helpers import answers, write_dataset
from lmstack.agent.testing.scripted_server import ScriptedServer

N = 4

# `stop_at=K` stops the run as Ctrl-C would when the K-th (sample, epoch) is solved, once the ones before it are
# saved: which results the run has is then known, whatever the threads' timing.
PYTHON_TASK = """
import sqlite3
import time

from lmstack.evals.dataset import load_jsonl
from lmstack.evals.scorers import numeric
from lmstack.evals.solvers import generate
from lmstack.evals.task import Task, solver, task

solved = []


@solver
def ctrl_c_at(call: int):
    def solve(state, ctx):
        solved.append(state.sample.id)
        if len(solved) == call:
            conn = sqlite3.connect(ctx.db_path)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and conn.execute(
                    "SELECT COUNT(*) FROM eval_samples WHERE run_id = ?", (ctx.run_id,)).fetchone()[0] < call - 1:
                time.sleep(0.01)
            conn.close()
            raise KeyboardInterrupt
        return state
    return solve


@task
def arith(stop_at: int = 0):
    return Task(dataset=load_jsonl("arith.jsonl"), solver=[generate(), ctrl_c_at(stop_at)], scorer=numeric())
"""


def listed(cli, db, run_id: str) -> str:
    done = cli("eval", "list", "--db", db)
    assert done.returncode == 0, done.stderr
    return next(line.strip() for line in done.stdout.splitlines() if line.split()[:1] == [run_id])


def report_rows(cli, db, tmp_path) -> dict[str, tuple[str, ...]]:
    """The HTML report's score rows of runs 'full' and 'cut', by run id: (run cell, scorer, reducer, mean, n)."""
    path = tmp_path / "report.html"
    assert cli("eval", "report", "full", "cut", "-o", path, "--db", db).returncode == 0
    table = path.read_text().split("<h2>Scores</h2>")[1].split("</table>")[0]
    rows = [[re.sub(r"<[^>]+>", " ", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", table)[1:]]  # after the header
    return {row[0].split()[0]: (row[0], row[3], row[4], row[5], row[8]) for row in rows}


def test_an_unfinished_run_shows_the_scores_of_its_whole_samples_marked_partial(tmp_path, cli):
    write_dataset(tmp_path / "arith.jsonl", N)
    (tmp_path / "tasks.py").write_text(PYTHON_TASK)
    db = tmp_path / "db.sqlite"
    with ScriptedServer({"scripts": {"good": [{"answers": answers(N, wrong_every=3)}]}}) as server:  # q0, q3 wrong
        command = ["eval", "run", f"{tmp_path / 'tasks.py'}@arith", "--model", server.base_url, "--model-name", "good",
                   "--epochs", "2", "--max-concurrency", "1", "--db", db]
        assert cli(*command, "--run-id", "full").returncode == 0
        # Stopped at its 6th of 8 results, one at a time: q0 and q1 have both epochs, q2 only its first.
        stopped = cli(*command, "-T", "stop_at=6", "--run-id", "cut")
        assert stopped.returncode == 130, stopped.stderr  # as Ctrl-C exits

        assert listed(cli, db, "cut").split()[:2] == ["cut", "failed"]
        assert "partial: 2/4 samples, failed  (stopped by Ctrl-C" in listed(cli, db, "cut")
        assert "partial" not in listed(cli, db, "full")
        rows = report_rows(cli, db, tmp_path)
        # q0 wrong and q1 right; q2 has one epoch of two, so it is not counted yet (with it: 0.6667 over 3).
        assert rows["cut"] == ("cut  partial: 2/4 samples, failed", "numeric", "mean", "0.5000", "2")
        assert rows["full"] == ("full", "numeric", "mean", "0.5000", "4")

        resumed = cli(*command, "-T", "stop_at=6", "--resume", "cut")  # finished: its own table, no longer partial
        assert resumed.returncode == 0, resumed.stderr
    assert listed(cli, db, "cut").split() == ["cut", "finished", "arith", "good"]
    assert report_rows(cli, db, tmp_path)["cut"] == ("cut", "numeric", "mean", "0.5000", "4")
