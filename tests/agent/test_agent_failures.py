"""How a run ends when the endpoint, the model's output or a tool misbehaves (scripted server, real SQLite,
`lmstack agent` as a real subprocess where the process itself is what is tested)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_helpers import call, journaled, run_agent
from cli_testing import default_sigint
from lmstack.agent.builtin_tools import calculator
from lmstack.agent.client import ModelCallError, OpenAIClient, RetryPolicy
from lmstack.agent.journal import Journal
from lmstack.agent.launch import open_database
from lmstack.agent.settings import AgentConfig
from lmstack.agent.store import claim_run, create_run, get_run, update_run
from lmstack.agent.testing.scripted_server import ScriptedServer
from lmstack.agent.tools import tool
from lmstack.config import to_dict
from lmstack.run_owner import process_start

FAILURE_TOOLS = Path(__file__).with_name("failure_tools.py")


@tool
def exits(code: int) -> str:
    """Call sys.exit, as a tool wrapping a CLI might.

    Args:
        code: the exit status.
    """
    sys.exit(code)


@tool
def interrupts(note: str) -> str:
    """Raise KeyboardInterrupt from inside the tool.

    Args:
        note: anything.
    """
    raise KeyboardInterrupt(note)


SCRIPT = {"scripts": {
    "cut": [{"content": "The answer is 42 and here is why", "stream_cut": 1}],
    "cut_always": [{"content": "The answer is 42 and here is why", "stream_cut": 10}],
    "rate_limited": [{"fail": [429], "retry_after": 1.5, "content": "after the wait"}],
    "rate_limited_long": [{"fail": [429], "retry_after": 3600, "content": "never"}],
    "empty": [{"content": ""}, {"content": "  \n "}],
    "empty_then_answer": [{"content": " "}, {"content": "42"}],
    "raising": [{"tool_calls": [call("exits", {"code": 3}), call("interrupts", {"note": "from the tool"})]},
                {"content": "both tools failed"}],
    "hang": [{"tool_calls": [call("hang", {"seconds": 60})]}, {"content": "the tool timed out"}],
    "slow": [{"content": "too late", "delay_s": 3}],
    # A long nap: the window in which the test interrupts the run must outlast a busy machine's polling delays.
    "nap": [{"tool_calls": [call("nap", {"seconds": 8})]}, {"content": "rested"}],
}}


@pytest.fixture(scope="module")
def server():
    with ScriptedServer(SCRIPT) as s:
        yield s


def lmstack(*args: str, db: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmstack.cli", "agent", *args, "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_a_stream_that_ends_before_its_finish_reason_is_retried_not_taken_as_the_answer(tmp_path, server):
    record, _ = run_agent(tmp_path, server, "cut", "hi", [calculator], stream=True)
    assert record.status == "completed" and record.final_answer == "The answer is 42 and here is why"
    assert len([r for r in server.requests() if r["model"] == "cut"]) == 2


def test_a_stream_cut_at_every_try_fails_the_run_naming_the_cause(tmp_path, server):
    record, _ = run_agent(tmp_path, server, "cut_always", "hi", [calculator], AgentConfig(max_attempts=2), stream=True)
    assert record.status == "failed" and "without a finish_reason" in record.stop_reason
    assert record.final_answer is None


def test_retry_after_is_waited_for(server):
    client = OpenAIClient(server.base_url, "rate_limited", retry=RetryPolicy(max_attempts=2, base_delay_s=0.01))
    start = time.monotonic()
    assert client.complete([{"role": "user", "content": "hi"}]).text == "after the wait"
    assert time.monotonic() - start >= 1.5


def test_a_retry_after_longer_than_the_longest_wait_fails_at_once_saying_so(server):
    client = OpenAIClient(server.base_url, "rate_limited_long", retry=RetryPolicy(max_attempts=3, base_delay_s=0.01))
    start = time.monotonic()
    with pytest.raises(ModelCallError, match="retry after 3600 s"):
        client.complete([{"role": "user", "content": "hi"}])
    assert time.monotonic() - start < 5


def test_an_empty_reply_is_re_asked_then_fails_the_run_instead_of_completing_blank(tmp_path, server):
    record, conn = run_agent(tmp_path, server, "empty", "hi", [calculator])
    assert record.status == "failed" and "was empty" in record.stop_reason and record.final_answer is None
    assert [e.status for e in Journal(conn, "run1").entries()] == ["completed", "completed"]
    (tmp_path / "again").mkdir()
    record, _ = run_agent(tmp_path / "again", server, "empty_then_answer", "hi", [calculator])
    assert record.status == "completed" and record.final_answer == "42"


def test_a_model_slower_than_the_timeout_fails_the_run_naming_the_setting_to_raise(tmp_path, server):
    """The stop reason said only "Request timed out.", not which setting decides how long that is."""
    process = lmstack("run", "hi", "--model", server.base_url, "--model-name", "slow", "--run-id", "slow",
                      "--tools", f"{FAILURE_TOOLS}:hang", "--set", "timeout_s=0.3", "--set", "max_attempts=1",
                      db=tmp_path / "db")
    process.communicate(timeout=50)
    record = get_run(open_database(tmp_path / "db"), "slow")
    assert record.status == "failed" and "Request timed out." in record.stop_reason
    assert ("(no answer within the 0.3 s timeout; a slower model needs a new run with --set timeout_s=SECONDS)"
            in record.stop_reason)


def test_a_tool_raising_systemexit_or_keyboardinterrupt_is_an_error_result_not_a_crash(tmp_path, server):
    record, conn = run_agent(tmp_path, server, "raising", "go", [exits, interrupts])
    assert record.status == "completed" and record.final_answer == "both tools failed"
    results = [e.response for e in Journal(conn, "run1").entries() if e.kind == "tool"]
    assert [(r["error_kind"], r["content"].split(" raised ")[1].split(":")[0]) for r in results] == [
        ("exception", "SystemExit"), ("exception", "KeyboardInterrupt")]


def test_a_tool_hung_past_its_timeout_does_not_keep_the_process_alive(tmp_path, server):
    start = time.monotonic()
    process = lmstack("run", "sleep", "--model", server.base_url, "--model-name", "hang", "--run-id", "hung",
                      "--tools", f"{FAILURE_TOOLS}:hang", db=tmp_path / "db")
    out, err = process.communicate(timeout=50)
    assert process.returncode == 0, err
    assert time.monotonic() - start < 30  # the tool sleeps 60 s; its 1 s timeout ends the call
    record = get_run(open_database(tmp_path / "db"), "hung")
    assert record.status == "completed" and record.final_answer == "the tool timed out"


def test_ctrl_c_mid_run_leaves_it_interrupted_with_the_cause_and_resume_finishes_it(tmp_path, server):
    db = tmp_path / "db"
    process = lmstack("run", "rest", "--model", server.base_url, "--model-name", "nap", "--run-id", "nap",
                      "--tools", f"{FAILURE_TOOLS}:nap", db=db, preexec_fn=default_sigint)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not journaled(db, "step0/tool0"):
        time.sleep(0.1)
    assert process.poll() is None, "the run ended before the test could interrupt it"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130
    # It printed only "lmstack agent: interrupted", and recorded "interrupted (KeyboardInterrupt: ); ...".
    reason = "stopped by Ctrl-C; continue it with `lmstack agent resume nap`"
    assert err.strip().splitlines()[-1] == f"run nap: {reason}"
    record = get_run(open_database(db), "nap")  # stored `running`; its process gone, it shows `interrupted`
    assert (record.status, record.stop_reason) == ("interrupted", reason)
    resumed = lmstack("resume", "nap", db=db)
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    record = get_run(open_database(db), "nap")
    assert record.status == "completed" and record.final_answer == "rested" and record.stop_reason == "final answer"


def test_a_run_that_ended_after_its_status_was_read_is_not_claimed_again(tmp_path):
    # What a second `resume` sees when the first one finishes the run between its read and its claim.
    conn = open_database(tmp_path / "db")
    create_run(conn, "raced", "hi", to_dict(AgentConfig()))
    update_run(conn, "raced", status="completed", final_answer="done elsewhere", stop_reason="final answer")
    ended = dict(conn.execute("SELECT * FROM agent_runs").fetchone())
    assert claim_run(conn, "raced") is False
    assert dict(conn.execute("SELECT * FROM agent_runs").fetchone()) == ended


def test_a_run_whose_pid_now_names_another_process_is_claimed(tmp_path):
    """After a reboot or a container restart pids start over, and the run's recorded pid may name an unrelated live
    process: one whose start differs from the recorded one is not the run's, and the run can be resumed."""
    conn = open_database(tmp_path / "db")
    create_run(conn, "reused", "hi", to_dict(AgentConfig()))
    unrelated = subprocess.Popen(["sleep", "30"])
    try:
        boot_id, ticks = process_start(unrelated.pid).rsplit(":", 1)
        conn.execute("UPDATE agent_runs SET owner_pid = ?, owner_host = ?, owner_start = ? WHERE id = 'reused'",
                     (unrelated.pid, socket.gethostname(), f"{boot_id}:{int(ticks) + 1}"))  # started a tick later
        assert claim_run(conn, "reused") is True
    finally:
        unrelated.kill()
        unrelated.wait()
    row = conn.execute("SELECT status, owner_pid, owner_host, owner_start FROM agent_runs").fetchone()
    assert tuple(row) == ("running", os.getpid(), socket.gethostname(), process_start(os.getpid()))
