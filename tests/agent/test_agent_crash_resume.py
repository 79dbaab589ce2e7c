"""Crash test: `lmstack agent run` (a real subprocess) is SIGKILLed at a random moment and resumed;
the run always finishes and the side-effecting tool's counter shows every call executed exactly once."""

import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_helpers import call
from lmstack.agent.launch import open_database
from lmstack.agent.store import get_run
from lmstack.agent.testing.scripted_server import ScriptedServer

STEPS, CALLS_PER_STEP = 6, 2
TOOLS = str(Path(__file__).with_name("crash_tools.py")) + ":bump_counter"
SCRIPT = {"scripts": {"crash": [
    {"delay_s": 0.05, "tool_calls": [call("bump_counter", {"counter": "total", "note": f"step {s} call {c}"})
                                     for c in range(CALLS_PER_STEP)]}
    for s in range(STEPS)] + [{"delay_s": 0.05, "content": "All counters bumped."}]}}


@pytest.fixture(scope="module")
def server():
    with ScriptedServer(SCRIPT) as s:
        yield s


def lmstack(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmstack.cli", "agent", *args]


def crash_and_resume(server, tmp_path: Path, kill_after_s: float) -> None:
    db, workspace = tmp_path / "lmstack.db", tmp_path / "ws"
    run = lmstack("run", "Bump the counter twelve times.", "--model", server.base_url, "--model-name", "crash",
                  "--tools", TOOLS, "--run-id", "crash", "--workspace", str(workspace), "--db", str(db),
                  "--set", "loops.repeat_limit=100")
    process = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(kill_after_s)
    process.send_signal(signal.SIGKILL)
    process.wait()
    conn = open_database(db)
    exists = conn.execute("SELECT 1 FROM agent_runs WHERE id = 'crash'").fetchone()
    # Killed before the run was even created: starting it again is the only way on.
    command = lmstack("resume", "crash", "--db", str(db)) if exists else run
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    record = get_run(conn, "crash")
    assert record.status == "completed" and record.final_answer == "All counters bumped."
    counter = sqlite3.connect(workspace / "counter.db")
    assert counter.execute("SELECT value FROM counters WHERE name = 'total'").fetchone()[0] == STEPS * CALLS_PER_STEP
    keys = [k for (k,) in counter.execute("SELECT idempotency_key FROM effects")]
    assert sorted(keys) == sorted(f"crash/step{s}/tool{c}" for s in range(STEPS) for c in range(CALLS_PER_STEP))
    journal = conn.execute("SELECT status, COUNT(*) FROM agent_journal WHERE kind = 'tool' GROUP BY status").fetchall()
    assert dict(journal) == {"completed": STEPS * CALLS_PER_STEP}


def uninterrupted_seconds(server, tmp_path: Path) -> float:
    start = time.monotonic()
    subprocess.run(lmstack("run", "Bump.", "--model", server.base_url, "--model-name", "crash", "--tools", TOOLS,
                           "--workspace", str(tmp_path / "ws0"), "--db", str(tmp_path / "timing.db"),
                           "--set", "loops.repeat_limit=100"), check=True, capture_output=True, timeout=120)
    return time.monotonic() - start


def run_trials(server, tmp_path: Path, trials: int, seed: int) -> None:
    duration = uninterrupted_seconds(server, tmp_path)
    rng = random.Random(seed)
    for trial in range(trials):
        # Kill points spread over the whole run, including interpreter start-up.
        crash_and_resume(server, tmp_path / f"trial{trial}", rng.uniform(0.1, duration))


def test_sigkill_at_random_points_then_resume_runs_every_side_effect_once(server, tmp_path):
    run_trials(server, tmp_path, trials=3, seed=0)


@pytest.mark.slow
def test_sigkill_twenty_trials(server, tmp_path):
    run_trials(server, tmp_path, trials=20, seed=1)
