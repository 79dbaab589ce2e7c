"""Data the dashboard tests look at, written with each layer's own writers: a training run dir,
agent runs (real runs against the scripted server, plus 1,000 runs and a 500-step trace), eval runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from lmstack.agent.client import ModelResponse, ToolCall, Usage
from lmstack.agent.journal import Journal
from lmstack.agent.launch import open_database, start_run
from lmstack.agent.settings import AgentConfig
from lmstack.agent.store import create_run, update_run
from lmstack.agent.tracing import Tracer
from lmstack.db import transaction
from lmstack.evals.store import SampleRecord, Store
from lmstack.evals.summary import summarize_run
from lmstack.train.metrics import MetricsLog
from lmstack.train.rundir import append_log, write_run_header

TOOLS_FILE = Path(__file__).parent / "web_tools.py"
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"><b>bold?</b>'
FLAGGED_ANSWER = "The tool said <b>bold</b>. Oslo is at 31 °C today."
CHAT_ANSWER = "Hello from the scripted model, streamed token by token."

SCRIPT = {"scripts": {
    "agent-xss": [{"content": None, "tool_calls": [{"name": "echo", "arguments": {"text": XSS}}]},
                  {"content": FLAGGED_ANSWER}],
    "agent-approval": [{"content": None, "tool_calls": [{"name": "guarded_echo", "arguments": {"text": "ship it"}}]},
                       {"content": "Shipped."}],
    "agent-outage": [{"fail": [500], "content": "Back again."}],  # fails its first try, then answers
    "agent-stalled": [{"delay_s": 120, "content": "Too late."}],  # a run that is still in its first call
    "chat": [{"content": CHAT_ANSWER}],
    "chat-tools": [{"content": None, "tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]},
                   {"content": "It is 12 °C in Oslo."}],
}}


def training_loss(step: int) -> float:
    return 2.0 + 6.0 * math.exp(-step / 15)


def train_record(step: int) -> dict:
    return {"step": step, "tokens": step * 4096, "loss": training_loss(step), "lr": 1e-3, "grad_norm": 1.0,
            "tokens_per_s": 50_000 + 100 * step, "mfu": 0.3 + step / 1000, "memory_mb": 100.0, "step_s": 0.08}


def seed_training_run(runs_root: Path, name: str = "tiny", steps: int = 60) -> Path:
    run_dir = runs_root / name
    run_dir.mkdir(parents=True)
    write_run_header(run_dir, {"step": 0}, {"run_name": name, "lr": 1e-3, "model": {"n_layer": 2}})
    metrics = MetricsLog(run_dir, resume_step=None)
    metrics.write({"event": "start", "step": 0})
    for step in range(1, steps + 1):
        metrics.write(train_record(step))
        if step % 20 == 0:
            metrics.write({"step": step, "val_loss": training_loss(step) + 0.1, "val_bpb": 1.5})
            append_log(run_dir, f"step {step}: val loss {training_loss(step) + 0.1:.4f}, 1.5000 bits/byte")
            append_log(run_dir, "  sample: " + repr(f"def sample_at_{step}(x):\n    return x"))
    metrics.close()
    return run_dir


def agent_config(base_url: str, script: str, workspace: Path) -> AgentConfig:
    config = AgentConfig(model=base_url, model_name=script, workspace=str(workspace),
                         tools=[f"{TOOLS_FILE}:echo", f"{TOOLS_FILE}:guarded_echo"])
    config.max_attempts = 1
    return config


def seed_agent_runs(db: Path, base_url: str, workspace: Path) -> dict:
    conn = open_database(db)
    flagged = start_run(conn, "Echo something, then report the weather.", agent_config(base_url, "agent-xss", workspace),
                        "flagged-run")
    waiting = start_run(conn, "Ship it, with approval.", agent_config(base_url, "agent-approval", workspace),
                        "approval-run")
    to_reject = start_run(conn, "Ship it, unless a human says no.", agent_config(base_url, "agent-approval", workspace),
                          "reject-run")
    failed = start_run(conn, "Say something once the endpoint is back.",
                       agent_config(base_url, "agent-outage", workspace), "outage-run")
    assert (flagged.status, waiting.status, to_reject.status, failed.status) == ("completed", "waiting", "waiting",
                                                                                  "failed")
    statuses = ["completed", "failed", "budget_exceeded", "running", "completed"]
    with transaction(conn):  # one commit for the lot: the nested writes join this transaction
        for i in range(1000):
            create_run(conn, f"bulk-{i:04d}", f"bulk task number {i}", {"model": base_url, "tools": []})
            update_run(conn, f"bulk-{i:04d}", status=statuses[i % len(statuses)], steps=i % 7)
        seed_long_trace(conn, "long-trace", 500)
    events = [dict(r) for r in conn.execute("SELECT * FROM agent_events WHERE run_id = 'flagged-run'")]
    conn.close()
    return {"flagged": "flagged-run", "waiting": "approval-run", "long": "long-trace", "failed": "outage-run",
            "events": events}


def seed_long_trace(conn, run_id: str, steps: int) -> None:
    create_run(conn, run_id, "a long task", {"model": "scripted", "tools": ["echo"]})
    write_trace_steps(conn, run_id, range(steps))
    update_run(conn, run_id, status="completed", steps=steps, final_answer="done")


def write_trace_steps(conn, run_id: str, steps: range) -> None:
    """Each step a model call and an echo tool call, journaled and traced as a run records them."""
    journal, tracer = Journal(conn, run_id), Tracer(conn, run_id)
    for step in steps:
        call = ToolCall(f"call_{step}", "echo", json.dumps({"text": f"item {step}"}))
        response = ModelResponse(f"Step {step}: looking at item {step}.", [call], Usage(100 + step, 12))
        for key, kind, request, result in [
                (f"step{step}/model0", "model", {"messages": []}, response.to_dict()),
                (f"step{step}/tool0", "tool", {"name": "echo", "arguments": {"text": f"item {step}"}},
                 {"call_id": call.id, "name": "echo", "content": f"item {step}", "ok": True, "error_kind": None})]:
            journal.start(key, kind, request)
            journal.complete(key, result)
            entry = journal.get(key)
            tracer.record(key, f"step{step}", key, kind, entry.started_at, entry.completed_at,
                          {"cost_usd": 0.0001} if kind == "model" else {"tool": "echo", "ok": True})


def seed_eval_runs(db: Path, n: int = 40) -> tuple[str, str]:
    """Run A right on 3 of 4 questions; run B right on all but two that A got right (a paired improvement)."""
    store = Store(db)
    config = {"scorers": ["match"], "higher_is_better": {"match": True}}
    for run_id, right in (("eval-a", lambda i: i % 4 != 0), ("eval-b", lambda i: i not in (1, 2))):
        store.create_run("arithmetic", f"model-{run_id[-1]}", config, {"git_sha": "test"}, run_id=run_id)
        for i in range(n):
            truth = str(2 * i + 3)
            output = f"The answer is {truth if right(i) else int(truth) + 1}."
            messages = [{"role": "user", "content": f"What is {i} plus {i + 3}?"}]
            store.save_sample(run_id, SampleRecord(
                f"q{i}", 0, "done", {"id": f"q{i}", "input": messages[0]["content"], "target": truth}, output,
                {"match": {"value": 1.0 if right(i) else 0.0, "answer": output.split()[-1].rstrip(".")}},
                [{"kind": "model_call", "messages": messages, "response": {"content": output}, "cached": False,
                  "usage": {"prompt_tokens": 12, "completion_tokens": 6}}],
                {"prompt_tokens": 12, "completion_tokens": 6}, None))
        store.finish_run(run_id, summarize_run(store.samples(run_id), ["mean"], {"match": True}, n_boot=200))
    store.close()
    return "eval-a", "eval-b"


def seed_interrupted_eval_run(db: Path) -> str:
    """A run whose process died without a word after 2 of its 5 samples (one right): its recorded executor is a child
    process that has exited."""
    store = Store(db)
    run_id = store.create_run("arithmetic", "model-k", {"scorers": ["match"], "planned_samples": 5}, {"git_sha": "test"},
                              run_id="eval-killed")
    for i, value in enumerate((1.0, 0.0)):
        store.save_sample(run_id, SampleRecord(f"q{i}", 0, "done", {"id": f"q{i}", "input": f"question {i}"}, "answer",
                                               {"match": {"value": value}}, [], {}, None))
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    with transaction(store.conn):
        store.conn.execute("UPDATE eval_runs SET owner_pid = ? WHERE id = ?", (int(ended.stdout), run_id))
    store.close()
    return run_id
