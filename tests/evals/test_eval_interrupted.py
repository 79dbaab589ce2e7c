"""A `lmstack eval run` killed without a word (SIGKILL, a power loss) is listed as 'interrupted' with the way to
continue it, not as 'running' until someone resumes it; and a run that a live process is executing cannot be
resumed by a second one. A live process that merely reuses the run's pid (after a reboot, say) is not the run's."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_testing import one_line_error
from eval_helpers import answers, arith_task
from lmstack.agent.testing.scripted_server import ScriptedServer
from lmstack.cli import main
from lmstack.db import transaction
from lmstack.evals.store import RunBusy, Store
from lmstack.run_owner import process_start

N = 20


def listed(cli, db, run_id) -> list[str]:
    """The run's line in `lmstack eval list`, split into words."""
    done = cli("eval", "list", "--db", db)
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
def test_a_sigkilled_run_lists_as_interrupted_refuses_a_second_executor_and_resumes(tmp_path, cli):
    task_file = arith_task(tmp_path, N)
    db = tmp_path / "db.sqlite"
    # 1 s an answer, one at a time: ~20 s of run in which to list it, resume it a second time and kill it (in-process
    # calls of well under a second each), even on a loaded machine; the resume asks for all the rest at once, so the
    # test stays short.
    with ScriptedServer({"scripts": {"slow": [{"answers": answers(N), "delay_s": 1.0}]}}) as server:
        run_args = ["eval", "run", task_file, "--model", server.base_url, "--model-name", "slow", "--db", db]
        # A real process, to be SIGKILLed; the second executor is this test's own process.
        process = subprocess.Popen([sys.executable, "-m", "lmstack.cli", *map(str, run_args), "--run-id", "killed",
                                    "--max-concurrency", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
        wait_for_samples(db, 1, process)
        assert listed(cli, db, "killed")[1] == "running"  # its process is alive

        second = cli(*run_args, "--resume", "killed")
        assert one_line_error(second, "eval") == (f"lmstack eval: error: eval run 'killed' is being executed by "
                                                  f"process {process.pid}; wait for it to finish, or stop it "
                                                  f"(kill {process.pid}) and resume again")
        assert process.poll() is None, "the run ended before the test could kill it"
        process.send_signal(signal.SIGKILL)
        # Not reaped yet, as where a container's init never reaps: a zombie still takes signal 0, yet runs no more.
        while Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            time.sleep(0.01)

        line = " ".join(listed(cli, db, "killed"))
        assert line.startswith("killed interrupted arith"), line
        assert line.endswith(f"(process {process.pid} on {socket.gethostname()} ended without finishing the run: "
                             "killed, or the machine went down; continue it with --resume killed)")
        process.wait()
        resumed = cli(*run_args, "--resume", "killed", "--max-concurrency", N)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert listed(cli, db, "killed")[1] == "finished"
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


def another_start(pid: int) -> str:
    """A start that is not `pid`'s: the process started one clock tick later, i.e. another process."""
    boot_id, ticks = process_start(pid).rsplit(":", 1)
    return f"{boot_id}:{int(ticks) + 1}"


@pytest.mark.timeout(120)
def test_a_live_pid_with_another_start_is_not_the_runs_process_and_the_run_resumes(tmp_path, cli):
    """After a reboot or a container restart pids start over, and the run's recorded pid may name an unrelated live
    process (here: a `sleep`'s; not this test's, which resumes the run itself): the run read 'running' forever, and
    its resume was refused, before starts were recorded."""
    task_file = arith_task(tmp_path, 4)
    db = tmp_path / "db.sqlite"
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        with ScriptedServer({"scripts": {"good": [{"answers": answers(4)}]}}) as server:
            run_args = ["eval", "run", str(task_file), "--model", server.base_url, "--model-name", "good",
                        "--db", str(db)]
            assert main([*run_args, "--run-id", "reused"]) == 0
            store = Store(db)
            with transaction(store.conn):  # as if killed after two samples, its pid now the sleep's
                store.conn.execute("UPDATE eval_runs SET status = 'running', finished = NULL, owner_pid = ?, "
                                   "owner_host = ?, owner_start = ? WHERE id = 'reused'",
                                   (unrelated.pid, socket.gethostname(), another_start(unrelated.pid)))
                store.conn.execute("DELETE FROM eval_samples WHERE run_id = 'reused' AND sample_id IN ('q0', 'q1')")
            assert listed(cli, db, "reused")[1] == "interrupted"
            resumed = cli(*run_args, "--resume", "reused")
        assert unrelated.poll() is None  # alive all along: its pid named a live process
    finally:
        unrelated.kill()
        unrelated.wait()
    assert resumed.returncode == 0 and "run reused: 4 results, 0 errors" in resumed.stdout, resumed.stderr[-2000:]
    assert listed(cli, db, "reused")[1] == "finished"


def test_a_start_from_another_boot_is_another_process(tmp_path):
    """Clock ticks start over at each boot: the same pid started at the same tick of another boot is not the run's."""
    store = Store(tmp_path / "db.sqlite")
    store.create_run("t", "m", {}, {}, run_id="before-reboot")  # recorded as run by this process
    ticks = process_start(os.getpid()).rsplit(":", 1)[1]
    with transaction(store.conn):
        store.conn.execute("UPDATE eval_runs SET owner_start = ? WHERE id = 'before-reboot'",
                           (f"another-boot:{ticks}",))
    assert store.run("before-reboot").status == "interrupted"


def test_a_refused_resume_says_kill_only_for_a_process_known_to_be_the_runs(tmp_path):
    """A pid recorded without its start (a run from before starts were recorded) may name an unrelated process:
    the refusal does not tell the user to kill it."""
    store = Store(tmp_path / "db.sqlite")
    other = subprocess.Popen(["sleep", "30"])
    refusals = {}
    try:
        for run_id, start in [("checked", process_start(other.pid)), ("unchecked", None)]:
            store.create_run("t", "m", {}, {}, run_id=run_id)
            with transaction(store.conn):
                store.conn.execute("UPDATE eval_runs SET owner_pid = ?, owner_start = ? WHERE id = ?",
                                   (other.pid, start, run_id))
            with pytest.raises(RunBusy) as busy:
                store.claim_run(run_id, {})
            refusals[run_id] = str(busy.value)
    finally:
        other.kill()
        other.wait()
    assert refusals == {
        "checked": f"eval run 'checked' is being executed by process {other.pid}; wait for it to finish, or stop it "
                   f"(kill {other.pid}) and resume again",
        "unchecked": f"eval run 'unchecked' is being executed by process {other.pid}; wait for it to finish, or stop "
                     "it and resume again"}
