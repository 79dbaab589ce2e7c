"""SIGKILL a real `lmstack eval run` half-way, resume it: same results as an uninterrupted run, and
no model request repeated for a sample that had finished (counted at the server)."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import pytest

from eval_helpers import answers, arith_task, question
from lmstack.agent.testing.scripted_server import ScriptedServer
from lmstack.evals.store import Store

N = 30


def eval_command(task_file, base_url, db, *extra):
    return ["eval", "run", str(task_file), "--model", base_url, "--model-name", "slow", "--max-concurrency", "2",
            "--db", str(db), *extra]


def done_samples(db) -> set[str]:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return {r[0] for r in conn.execute("SELECT sample_id FROM eval_samples WHERE status = 'done'")}
    except sqlite3.OperationalError:  # tables not created yet
        return set()


@pytest.mark.timeout(180)
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, cli):
    task_file = arith_task(tmp_path, N)
    script = {"scripts": {"slow": [{"answers": answers(N, wrong_every=4), "delay_s": 0.1}]}}
    db = tmp_path / "interrupted.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with ScriptedServer(script) as server:
        # A real process, to be SIGKILLed; the resume and the reference run in this one.
        process = subprocess.Popen([sys.executable, "-m", "lmstack.cli",
                                    *eval_command(task_file, server.base_url, db, "--run-id", "killed")], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while len(done_samples(db)) < N // 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, f"eval finished before the kill: {process.stderr.read().decode()[-2000:]}"
        process.send_signal(signal.SIGKILL)
        process.wait()
        finished_before_kill = done_samples(db)
        assert N // 2 <= len(finished_before_kill) < N

        # The resume and the reference ask all at once (2 at a time took ~2 s more): how many requests are in flight
        # changes no answer, and the requests the resume repeats are counted below all the same.
        resumed = cli(*eval_command(task_file, server.base_url, db, "--resume", "killed", "--max-concurrency", N))
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        asked = Counter(m["messages"][-1]["content"] for m in server.requests())
        repeated = [q for q in (question(int(s[1:])) for s in finished_before_kill) if asked[q] != 1]
        assert repeated == []  # finished samples: exactly one request each, over both processes
        assert sum(asked.values()) <= N + 2  # at most the 2 requests in flight at the kill were re-sent

        reference = cli(*eval_command(task_file, server.base_url, tmp_path / "reference.db", "--run-id", "reference",
                                      "--max-concurrency", N))
        assert reference.returncode == 0, reference.stderr[-2000:]

    def results(db_path, run_id):
        store = Store(db_path)
        rows = {(r.sample_id, r.epoch): (r.status, r.output, r.scores) for r in store.samples(run_id)}
        return rows, store.run(run_id).summary["scores"]

    resumed_rows, resumed_scores = results(db, "killed")
    reference_rows, reference_scores = results(tmp_path / "reference.db", "reference")
    assert len(resumed_rows) == N and resumed_rows == reference_rows
    assert resumed_scores == reference_scores
    assert reference_scores["numeric"]["mean"]["mean"] == pytest.approx(1 - len(range(0, N, 4)) / N)
