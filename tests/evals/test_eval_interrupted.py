"""A `lmstack eval run` killed without a word (SIGKILL, a power loss) is listed as 'interrupted' with the way to
continue it, not as 'running' until someone resumes it; and a run that a live process is executing cannot be
resumed by a second one."""

import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

from cli_testing import one_line_error, run_cli
from eval_helpers import answers, write_dataset
from lmstack.agent.testing.scripted_server import ScriptedServer
from lmstack.db import transaction
from lmstack.evals.store import Store

N = 40


def listed(db, run_id) -> list[str]:
    """The run's line in `lmstack eval list`, split into words."""
    done = run_cli("eval", "list", "--db", db)
    assert done.returncode == 0, done.stderr
    return next(line.split() for line in done.stdout.splitlines() if line.split()[:1] == [run_id])


def wait_for_samples(db, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:  # reads, never waits long
                if conn.execute("SELECT COUNT(*) FROM eval_samples").fetchone()[0] >= count:
                    return
        except sqlite3.OperationalError:  # tables not made yet
            pass
        time.sleep(0.02)
    raise AssertionError(f"the run ended or stalled before {count} samples: {process.stderr.read()[-2000:]}")


@pytest.mark.timeout(180)
def test_a_sigkilled_run_lists_as_interrupted_refuses_a_second_executor_and_resumes(tmp_path):
    write_dataset(tmp_path / "arith.jsonl", N)
    task_file = tmp_path / "arith.yaml"
    task_file.write_text("name: arith\ndataset: arith.jsonl\nsolver: [generate]\nscorer: [numeric]\n")
    db = tmp_path / "db.sqlite"
    # 0.5 s an answer, 2 at a time: ~10 s of run in which to list it, resume it a second time and kill it.
    with ScriptedServer({"scripts": {"slow": [{"answers": answers(N), "delay_s": 0.5}]}}) as server:
        run_args = ["eval", "run", task_file, "--model", server.base_url, "--model-name", "slow", "--db", db]
        process = subprocess.Popen([sys.executable, "-m", "lmstack.cli", *map(str, run_args), "--run-id", "killed",
                                    "--max-concurrency", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
        wait_for_samples(db, 2, process)
        assert listed(db, "killed")[1] == "running"  # its process is alive

        second = run_cli(*run_args, "--resume", "killed")
        assert one_line_error(second, "eval") == (f"lmstack eval: error: eval run 'killed' is being executed by "
                                                  f"process {process.pid}; wait for it to finish, or stop it "
                                                  f"(kill {process.pid}) and resume again")
        assert process.poll() is None, "the run ended before the test could kill it"
        process.send_signal(signal.SIGKILL)
        process.wait()  # reaped: a zombie would still answer as a live pid

        line = " ".join(listed(db, "killed"))
        assert line.startswith("killed interrupted arith"), line
        assert line.endswith(f"(process {process.pid} on {socket.gethostname()} ended without finishing the run: "
                             "killed, or the machine went down; continue it with --resume killed)")
        resumed = run_cli(*run_args, "--resume", "killed", "--max-concurrency", "8")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert listed(db, "killed")[1] == "finished"
    assert Store(db).run("killed").summary["scores"]["numeric"]["mean"]["n"] == N


def test_only_a_process_of_this_host_is_looked_up(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(ended.stdout)  # exited and reaped: no process of this host has that pid now
    store = Store(tmp_path / "db.sqlite")
    for run_id, host in [("here", socket.gethostname()), ("elsewhere", "another-machine")]:
        store.create_run("t", "m", {}, {}, run_id=run_id)
        with transaction(store.conn):
            store.conn.execute("UPDATE eval_runs SET owner_pid = ?, owner_host = ? WHERE id = ?", (pid, host, run_id))
    assert store.run("here").status == "interrupted"
    # The pid was another machine's: here it names no process, or another one; that run may well be alive.
    assert (store.run("elsewhere").status, store.run("elsewhere").error) == ("running", None)
