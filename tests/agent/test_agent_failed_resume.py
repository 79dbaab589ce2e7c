"""A `failed` run resumes once the endpoint is back: the steps before the failure are replayed from the journal
(their tools not run again), the failed step is made again. And a tool's output is capped before it is stored.
Scripted server, real SQLite; `lmstack agent` through its CLI where the command is what is tested, in this process
(a new interpreter per call cost a second or more of make test; none of these checks needs a process of its own)."""

import json
import sqlite3
from pathlib import Path

import pytest

from agent_helpers import call, run_agent
from lmstack.agent.builtin_tools import load_tools
from lmstack.agent.launch import open_database, resume_run
from lmstack.agent.settings import AgentConfig
from lmstack.agent.store import get_run
from lmstack.agent.testing.scripted_server import ScriptedServer

FAILURE_TOOLS = Path(__file__).with_name("failure_tools.py")

SCRIPT = {"scripts": {
    # Two tool calls, then an endpoint that fails every try of the first session (2 attempts), then answers.
    "outage": [{"tool_calls": [call("tally", {"note": "a"}), call("tally", {"note": "b"})]},
               {"fail": [500, 500], "content": "Tallied a and b."}],
    # A model that replies with nothing, then (re-asked) nothing again; asked again after the resume, it answers.
    "silent": [{"tool_calls": [call("tally", {"note": "once"})], "usage": {"prompt_tokens": 10, "completion_tokens": 1}},
               {"empty": 1, "content": "Tallied once.", "usage": {"prompt_tokens": 100, "completion_tokens": 2}},
               {"content": "", "usage": {"prompt_tokens": 1000, "completion_tokens": 3}}],
    "flood": [{"tool_calls": [call("flood", {"chars": 1_000_000})]},
              {"fail": [503, 503], "content": "That was a lot of brackets."}],
}}


@pytest.fixture(scope="module")
def server():
    with ScriptedServer(SCRIPT) as s:
        yield s


@pytest.fixture
def agent(cli):
    """`lmstack agent ARGS --db DB`."""
    def run(*args, db: Path):
        return cli("agent", *args, "--db", db)

    return run


def turns_requested(server, script: str) -> list[int]:
    """The turn each request to `script` asked for (its assistant messages so far), in order."""
    return [sum(m["role"] == "assistant" for m in r["messages"]) for r in server.requests() if r["model"] == script]


def journal_keys(db: Path, kind: str) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT key, status FROM agent_journal WHERE kind = ? ORDER BY key", (kind,)).fetchall()


def tallied(workspace: Path) -> list[str]:
    """The notes tallied, sorted: a step's tool calls run concurrently, in either order."""
    return sorted((workspace / "tally.txt").read_text().splitlines())


def start(agent, server, tmp_path: Path, script: str, task: str) -> tuple[Path, Path]:
    db, workspace = tmp_path / "lmstack.db", tmp_path / "ws"
    failed = agent("run", task, "--model", server.base_url, "--model-name", script, "--run-id", script,
                   "--tools", f"{FAILURE_TOOLS}:tally", "--workspace", workspace, "--set", "max_attempts=2", db=db)
    assert failed.returncode == 1 and f"run {script}: failed" in failed.stdout, failed.stdout + failed.stderr
    return db, workspace


def test_a_run_whose_endpoint_failed_resumes_once_it_is_back_without_running_its_tools_again(agent, server, tmp_path):
    db, workspace = start(agent, server, tmp_path, "outage", "Tally a and b.")
    record = get_run(open_database(db), "outage")
    assert record.status == "failed" and "500" in record.stop_reason
    assert "`lmstack agent resume outage` continues once the endpoint is back" in record.stop_reason
    assert tallied(workspace) == ["a", "b"]

    resumed = agent("resume", "outage", db=db)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.startswith("run outage: completed (2 steps") and "Tallied a and b." in resumed.stdout
    record = get_run(open_database(db), "outage")
    assert (record.status, record.final_answer, record.stop_reason) == ("completed", "Tallied a and b.", "final answer")
    assert tallied(workspace) == ["a", "b"]  # the journal's results were replayed: no tool ran twice
    assert journal_keys(db, "tool") == [("step0/tool0", "completed"), ("step0/tool1", "completed")]
    # The first model call was replayed too; the failed one was asked again (two failed tries, then the answer).
    assert turns_requested(server, "outage") == [0, 1, 1, 1]


def test_a_run_failed_by_empty_replies_resumes_by_asking_that_step_again(agent, server, tmp_path):
    db, workspace = start(agent, server, tmp_path, "silent", "Tally once.")
    record = get_run(open_database(db), "silent")
    assert record.status == "failed" and "was empty" in record.stop_reason
    assert "`lmstack agent resume silent` redoes the step" in record.stop_reason
    assert record.prompt_tokens == 10 + 100 + 1000

    resumed = agent("resume", "silent", db=db)
    assert resumed.returncode == 0, resumed.stderr
    record = get_run(open_database(db), "silent")
    assert (record.status, record.final_answer) == ("completed", "Tallied once.")
    assert tallied(workspace) == ["once"]
    # Step 1 was asked from its start, not after its two empty replies; those stay in the journal, set aside, and
    # their tokens still count.
    assert turns_requested(server, "silent") == [0, 1, 2, 1]
    assert journal_keys(db, "model") == [("step0/model0", "completed"), ("step1/model0", "completed"),
                                         ("step1/model0~failed1", "completed"), ("step1/model1~failed1", "completed")]
    assert (record.prompt_tokens, record.completion_tokens) == (10 + 100 + 1000 + 100, 1 + 2 + 3 + 2)
    with sqlite3.connect(db) as conn:
        spans = sorted(name for (name,) in conn.execute("SELECT name FROM agent_spans WHERE kind = 'model'"))
    assert spans == ["model step0/model0", "model step1/model0", "model step1/model0~failed1",
                     "model step1/model1~failed1"]


def test_a_tool_output_is_stored_and_shown_capped_and_a_resume_replays_the_same_text(server, tmp_path):
    config = AgentConfig(max_attempts=2, max_tool_output_chars=1000, tools=[f"{FAILURE_TOOLS}:flood"])
    record, conn = run_agent(tmp_path, server, "flood", "Flood.", load_tools(config.tools), config)
    assert record.status == "failed"
    # 1,000,000 characters: the note for cutting up to 7 digits of them is 54 long, leaving 946 = 473 + 473 kept,
    # so 999,054 are cut (whose note, 6 digits, is 53 long: 999 in all).
    capped = "<" * 473 + "\n[tool output truncated: 999054 characters cut here]\n" + ">" * 473
    stored = conn.execute("SELECT response FROM agent_journal WHERE key = 'step0/tool0'").fetchone()["response"]
    assert len(stored) < 1200 and json.loads(stored)["content"] == capped
    assert resume_run(conn, "run1").status == "completed"
    sent = [r["messages"][-1] for r in server.requests() if r["model"] == "flood"][1:]
    assert len(sent) == 3 and all(m == {"role": "tool", "tool_call_id": "call_0_0", "content": capped} for m in sent)
