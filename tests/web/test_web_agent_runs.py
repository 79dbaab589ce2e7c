"""Agent runs started by real `lmstack agent run` processes in a directory of their own, seen and approved through
the real `lmstack ui` (started in another): a tool file named relative to the run's directory resumes; an approval
that cannot resume the run decides nothing; a run whose process was SIGKILLed shows `interrupted`."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from web_seed import TOOLS_FILE


def agent(*args, cwd: Path, db: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmstack.cli", "agent", *map(str, args), "--db", str(db)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def waiting_run(run_id: str, scripted, seeded, tmp_path: Path) -> Path:
    """`cd agent; lmstack agent run ... --tools mytools.py:guarded_echo`, paused for approval; the run's directory."""
    run_dir = tmp_path / "agent"
    run_dir.mkdir()
    (run_dir / "mytools.py").write_text(TOOLS_FILE.read_text())
    assert Path.cwd() != run_dir  # the dashboard's directory is another
    run = agent("run", "Ship it.", "--model", scripted.base_url, "--model-name", "agent-approval", "--tools",
                "mytools.py:guarded_echo", "--run-id", run_id, "--workspace", "ws", cwd=run_dir, db=seeded["db"])
    out, err = run.communicate(timeout=60)
    assert out.startswith(f"run {run_id}: waiting"), out + err
    return run_dir


def poll(api, run_id: str, until, timeout_s: float = 30) -> dict:
    """The run's overview once `until(overview)` holds (or the last one, at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = api.get(f"/api/agents/runs/{run_id}")
        if (response.status_code == 200 and until(response.json())) or time.monotonic() > deadline:
            return response.json()
        time.sleep(0.2)


def test_a_run_started_in_another_directory_is_approved_and_resumed(api, scripted, seeded, tmp_path):
    # The tool file was saved as given, "mytools.py": the dashboard answered "resumed" while its resume failed to
    # find the file, and the run stayed `waiting` on a decided call.
    waiting_run("relative-run", scripted, seeded, tmp_path)
    decided = api.post("/api/agents/runs/relative-run/approvals", json={"approve": True})
    assert decided.json() == {"decided": ["step0/tool0"], "approve": True, "resumed": True}
    run = poll(api, "relative-run", lambda r: r["status"] not in ("waiting", "running"))
    assert (run["status"], run["final_answer"], run["resumable"]) == ("completed", "Shipped.", False)


def test_an_approval_the_dashboard_cannot_resume_decides_nothing(api, scripted, seeded, tmp_path):
    run_dir = waiting_run("moved-run", scripted, seeded, tmp_path)
    (run_dir / "mytools.py").rename(run_dir / "renamed.py")  # the run's tool file is gone since it paused
    refused = api.post("/api/agents/runs/moved-run/approvals", json={"approve": True})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "cannot_resume"
    message = refused.json()["error"]["message"]
    assert f"cannot import '{(run_dir / 'mytools.py').resolve()}'" in message
    assert "lmstack agent approve moved-run" in message
    run = api.get("/api/agents/runs/moved-run").json()
    assert run["status"] == "waiting" and [a["decision"] for a in run["approvals"]] == ["pending"]
    assert run["stop_reason"].startswith("approval needed for guarded_echo (step0/tool0)")


def test_a_run_whose_process_was_sigkilled_shows_interrupted(api, scripted, seeded, tmp_path):
    process = agent("run", "Wait for the model.", "--model", scripted.base_url, "--model-name", "agent-stalled",
                    "--run-id", "killed-run", cwd=tmp_path, db=seeded["db"])
    try:
        started = poll(api, "killed-run", lambda r: r["trace_steps"] == 1)  # its first model call is under way
        assert started["status"] == "running" and started["resumable"], started
    finally:
        process.kill()
        process.communicate()
    run = api.get("/api/agents/runs/killed-run").json()
    assert run["status"] == "interrupted" and run["resumable"]  # the page goes on following it
    assert run["stop_reason"] == (f"process {process.pid} on {socket.gethostname()} ended without finishing the run: "
                                  "killed, or the machine went down; `lmstack agent resume killed-run` continues it "
                                  "from the last completed step")
    interrupted = api.get("/api/agents/runs?status=interrupted").json()
    assert "killed-run" in [r["id"] for r in interrupted["runs"]]
    assert {r["status"] for r in interrupted["runs"]} == {"interrupted"}
    assert interrupted["total"] == interrupted["status_counts"]["interrupted"]
    running = api.get("/api/agents/runs?status=running&limit=500").json()
    assert "killed-run" not in [r["id"] for r in running["runs"]] and running["total"] <= 500
