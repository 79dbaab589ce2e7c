"""The CLI end to end (real subprocesses): run, list, trace (tree and OpenTelemetry JSON), approve, resume."""

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_helpers import call
from cli_testing import one_line_error, run_cli
from lmstack.agent.budget import BudgetConfig, unpriced_dollar_budget
from lmstack.agent.launch import open_database
from lmstack.agent.settings import AgentConfig
from lmstack.agent.testing.scripted_server import ScriptedServer, free_port
from lmstack.cli import reader_gone
from lmstack.config import ConfigError, load_config
from lmstack.db import transaction
from lmstack.model.checkpoint import save_model_dir
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model

SCRIPT = {"scripts": {
    "calc": [{"tool_calls": [call("calculator", {"expression": "6 * 7"}), call("calculator", {"expression": "6 + 7"})]},
             {"content": "6 * 7 = 42 and 6 + 7 = 13; I saved both to results.txt."}],
    "files": [{"tool_calls": [call("write_file", {"path": "plan.md", "content": "1. buy milk"})]},
              {"content": "I saved the plan to plan.md."}],
}}
APPROVAL_TOOLS = Path(__file__).with_name("approval_tools.py")


@pytest.fixture(scope="module")
def server():
    with ScriptedServer(SCRIPT) as s:
        yield s


@pytest.fixture
def lmstack(cli):
    """`lmstack agent ARGS --db DB`, in this process (see the `cli` fixture)."""
    def run(*args, db: Path) -> subprocess.CompletedProcess:
        return cli("agent", *args, "--db", db)
    return run


def test_run_list_and_trace(lmstack, server, tmp_path):
    db = tmp_path / "lmstack.db"
    run = lmstack("run", "What are 6*7 and 6+7?", "--model", server.base_url, "--model-name", "calc",
                  "--tools", "calculator", "--run-id", "r1", "--workspace", str(tmp_path / "ws"), db=db)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith("run r1: completed (2 steps")
    assert "42 and 6 + 7 = 13" in run.stdout

    listing = lmstack("list", db=db)
    assert listing.returncode == 0 and "r1" in listing.stdout and "completed" in listing.stdout

    tree = lmstack("trace", "r1", db=db).stdout.splitlines()
    assert tree[0] == "run r1: completed -- final answer"
    assert tree[1].startswith("run r1  (")
    assert [line.strip().split("  (")[0] for line in tree if line.startswith("    tool")] == ["tool calculator"] * 2
    # The answer claims a file was saved, but no tool wrote one: the action-claim monitor's event is on the tree.
    flagged = [line for line in tree if line.strip().startswith("! action_claims")]
    assert len(flagged) == 1 and "I saved both to results.txt" in flagged[0]

    otel = json.loads(lmstack("trace", "r1", "--otel", "-", db=db).stdout)
    spans = otel["resourceSpans"][0]["scopeSpans"][0]["spans"]
    by_id = {s["spanId"]: s for s in spans}
    assert len({s["traceId"] for s in spans}) == 1 and len(spans[0]["traceId"]) == 32
    assert all(len(s["spanId"]) == 16 and int(s["endTimeUnixNano"]) >= int(s["startTimeUnixNano"]) for s in spans)
    kinds = sorted(next(a["value"]["stringValue"] for a in s["attributes"] if a["key"] == "lmstack.span_kind")
                   for s in spans)
    assert kinds == ["model", "model", "run", "step", "step", "tool", "tool"]
    for s in spans:
        if "parentSpanId" in s:
            assert s["parentSpanId"] in by_id
    events = [e for s in spans for e in s["events"]]
    assert [e["name"] for e in events] == ["monitor.action_claims"]


def test_file_tool_claim_is_not_flagged_when_the_file_was_written(lmstack, server, tmp_path):
    db = tmp_path / "lmstack.db"
    run = lmstack("run", "Write a plan.", "--model", server.base_url, "--model-name", "files", "--tools", "files",
                  "--run-id", "r2", "--workspace", str(tmp_path / "ws"), db=db)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "ws" / "plan.md").read_text() == "1. buy milk"
    assert "! " not in lmstack("trace", "r2", db=db).stdout


def test_approve_from_the_command_line(lmstack, server, tmp_path):
    db = tmp_path / "lmstack.db"
    run = lmstack("run", "Write a plan.", "--model", server.base_url, "--model-name", "files",
                  "--tools", f"{APPROVAL_TOOLS}:write_file", "--run-id", "r3", "--workspace", str(tmp_path / "ws"), db=db)
    assert run.returncode == 0 and "run r3: waiting" in run.stdout and not (tmp_path / "ws" / "plan.md").exists()
    assert "waiting" in lmstack("list", "--status", "waiting", db=db).stdout
    approved = lmstack("approve", "r3", db=db)
    assert approved.returncode == 0, approved.stderr
    assert "approved: step0/tool0" in approved.stdout and "run r3: completed" in approved.stdout
    assert (tmp_path / "ws" / "plan.md").read_text() == "1. buy milk"


def test_user_errors_are_one_line_with_exit_code_2(lmstack, tmp_path):
    open_database(tmp_path / "x.db")
    missing = lmstack("resume", "nope", db=tmp_path / "x.db")
    assert missing.returncode == 2 and "no agent run with id 'nope'" in missing.stderr
    bad_tool = lmstack("run", "x", "--model", "http://127.0.0.1:9/v1", "--model-name", "m", "--tools", "teleport",
                       db=tmp_path / "x.db")
    assert bad_tool.returncode == 2 and "--tools 'teleport'" in bad_tool.stderr


@pytest.mark.parametrize("command", [["list"], ["trace", "r1"], ["approve", "r1"], ["resume", "r1"]])
def test_commands_on_recorded_runs_refuse_a_database_that_does_not_exist_and_create_none(tmp_path, command):
    db = tmp_path / "typo" / "lmstack.db"
    refused = run_cli("agent", *command, "--db", db)
    assert one_line_error(refused, "agent") == (f"lmstack agent: error: database '{db}' does not exist; `lmstack agent "
                                                "run` creates it: pass the --db its runs were recorded in")
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("command", [["list"], ["trace", "r1"], ["approve", "r1"], ["resume", "r1"]])
def test_commands_on_recorded_runs_refuse_another_apps_database_and_leave_it_unchanged(tmp_path, command):
    """Regression: `agent list --db other.db` added the agent tables and schema_versions to another app's file."""
    db = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(db)) as other:
        other.execute("CREATE TABLE notes (body TEXT)")
        other.commit()
    before = db.read_bytes()
    refused = run_cli("agent", *command, "--db", db)
    assert one_line_error(refused, "agent") == (f"lmstack agent: error: database '{db}' is not lmstack's (it has no "
                                                "schema_versions table; left unchanged); `lmstack agent run` creates "
                                                "it: pass the --db its runs were recorded in")
    assert db.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]


def test_a_dollar_budget_on_a_model_without_a_price_is_said_to_have_no_effect(lmstack, server, tmp_path):
    """Regression: --set budget.max_dollars on our own server (every call $0) was silently never reached."""
    def run(*settings: str) -> subprocess.CompletedProcess:
        return lmstack("run", "What is 6 * 7?", "--model", server.base_url, "--model-name", "calc", *settings,
                       db=tmp_path / "lmstack.db")

    unpriced, priced = run("--set", "budget.max_dollars=0.5"), run(
        "--set", "budget.max_dollars=0.5", "--set", "budget.price_in_per_mtok=1", "--set", "budget.price_out_per_mtok=1")
    assert unpriced.returncode == 0 and priced.returncode == 0, unpriced.stderr + priced.stderr
    assert ("warning: budget.max_dollars=0.5 has no effect: model 'calc' has no price, so its calls cost $0; set "
            "budget.price_in_per_mtok and budget.price_out_per_mtok (dollars per million tokens)") in unpriced.stderr
    assert "warning" not in priced.stderr
    # prices of 0 set on purpose say the model is free: nothing to warn about
    free = BudgetConfig(max_dollars=0.5, price_in_per_mtok=0.0, price_out_per_mtok=0.0)
    assert unpriced_dollar_budget("calc", free) is None


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a user error prints (after the run's header line, when `run` got that far)."""
    assert result.returncode == 2, result.stdout + result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_a_failed_model_listing_says_what_to_fix(lmstack, server, tmp_path):
    nothing_there = lmstack("run", "x", "--model", f"http://127.0.0.1:{free_port()}/v1", db=tmp_path / "x.db")
    assert "is the server running at that URL?" in error_line(nothing_there)
    no_such_path = lmstack("run", "x", "--model", server.base_url.replace("/v1", "/nope"), db=tmp_path / "x.db")
    assert "404" in error_line(no_such_path) and error_line(no_such_path).endswith("pass --model-name")
    # A refused API key: tests/agent/test_agent_own_server.py, against our server with a key.


def test_a_budget_that_cannot_work_is_refused_before_the_run_exists(lmstack, tmp_path):
    db = tmp_path / "x.db"
    refused = lmstack("run", "x", "--model", "http://127.0.0.1:9/v1", "--model-name", "m",
                      "--set", "budget.max_steps=-1", db=db)
    assert error_line(refused) == "lmstack agent: error: budget.max_steps = -1: must be > 0"
    assert not db.exists()  # no run was recorded


@pytest.mark.parametrize("setting", ["budget.max_steps=0", "budget.max_tokens=-1", "budget.max_wall_s=0",
                                     "budget.max_dollars=-0.5", "budget.price_in_per_mtok=-1", "loops.repeat_limit=0",
                                     "loops.no_progress_limit=-2", "max_attempts=0", "context_tokens=0",
                                     "max_output_tokens=0", "timeout_s=-1", "monitors.max_retries=-1",
                                     "monitors.self_consistency_k=0", "temperature=-0.5",
                                     "max_tool_output_chars=50"])  # the cut's note and next to nothing else
def test_each_limit_below_what_a_run_needs_is_named(setting):
    key = setting.split("=")[0]
    with pytest.raises(ConfigError, match=f"^{key} = "):
        load_config(AgentConfig, overrides=[setting])


def test_zero_dollars_and_zero_retries_are_meaningful_and_accepted():
    config = load_config(AgentConfig, overrides=["budget.max_dollars=0", "monitors.max_retries=0"])
    assert config.budget.max_dollars == 0 and config.monitors.max_retries == 0


def test_resuming_a_run_that_is_over_says_so_and_runs_nothing(lmstack, server, tmp_path):
    # A `failed` run resumes (test_agent_failed_resume.py); every other end would only be reached again.
    db = tmp_path / "lmstack.db"
    looped = lmstack("run", "x", "--model", server.base_url, "--model-name", "calc", "--run-id", "r4",
                     "--workspace", str(tmp_path / "ws"), "--set", "loops.repeat_limit=1", db=db)
    assert looped.returncode == 1 and "run r4: loop_detected" in looped.stdout
    calls_before = len(server.requests())
    resumed = lmstack("resume", "r4", db=db)
    assert resumed.returncode == 1  # the run's outcome, as `run` reported it: idempotent after a crash
    assert "run r4 has already ended (loop_detected): nothing to resume" in resumed.stderr
    assert resumed.stdout == looped.stdout
    assert len(server.requests()) == calls_before  # nothing ran


def test_only_a_stdout_whose_reader_left_counts_as_closed():
    # Any other broken pipe (a subprocess's, a socket's) is an error to report, not a reader leaving.
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream:
        assert not reader_gone(stream)
        os.close(read_end)
        assert reader_gone(stream)


def test_output_into_a_closed_pipe_ends_quietly(tmp_path):
    db = tmp_path / "lmstack.db"
    conn = open_database(db)
    with transaction(conn):  # far more lines than a pipe buffers, so `list` is still writing when the reader leaves
        conn.executemany("INSERT INTO agent_runs (id, task, status, config, created_at, updated_at) "
                         "VALUES (?, ?, 'completed', '{}', ?, ?)",
                         [(f"run{i}", "a task long enough to fill a line " * 2, time.time(), time.time())
                          for i in range(3000)])
    process = subprocess.Popen([sys.executable, "-m", "lmstack.cli", "agent", "list", "--limit", "3000",
                                "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().startswith("RUN")  # like `| head -1`
    process.stdout.close()
    assert process.wait(timeout=60) == 1
    assert process.stderr.read() == ""


def test_a_model_or_workspace_that_cannot_load_is_refused_before_the_run_exists(lmstack, tmp_path):
    """The run was recorded first, then the checkpoint loaded: a damaged one (a traceback) or one without a
    tokenizer (an AttributeError at the first call) left a run that stays `running` forever. A --workspace that
    is a file was a FileExistsError traceback."""
    db = tmp_path / "x.db"
    model = build_model(ModelConfig(arch="llama", vocab_size=320, block_size=64, n_layer=1, n_head=2, n_embd=32))
    no_tokenizer = save_model_dir(tmp_path / "bare", model, None)
    assert error_line(lmstack("run", "x", "--model", str(no_tokenizer), db=db)).endswith(
        f"'{no_tokenizer}' has no tokenizer.json, which this command needs to read and write text; copy the "
        "tokenizer.json the model was trained with into it")
    weights = no_tokenizer / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert f"'{weights}' cannot be read (" in error_line(lmstack("run", "x", "--model", str(no_tokenizer), db=db))
    (tmp_path / "notes.txt").write_text("keep me")
    refused = lmstack("run", "x", "--model", "http://127.0.0.1:9/v1", "--model-name", "m", "--tools", "files",
                      "--workspace", str(tmp_path / "notes.txt"), db=db)
    assert error_line(refused).endswith("is a file; pass a directory for the file tools (it is created when missing)")
    assert "Traceback" not in refused.stderr and (tmp_path / "notes.txt").read_text() == "keep me"
    assert "\n" not in lmstack("list", db=db).stdout.strip()  # the header alone: no run was recorded


def test_list_names_a_status_or_limit_that_cannot_match(lmstack, tmp_path):
    """Both listed nothing and exited 0, as if there were no such runs."""
    db = tmp_path / "x.db"
    open_database(db).close()  # the status is checked by the store, on a database that exists
    assert error_line(lmstack("list", "--status", "done", db=db)) == (
        "lmstack agent: error: status 'done' is not a run status; use one of running, interrupted, waiting, completed, "
        "failed, budget_exceeded, loop_detected, no_progress, stopped_by_monitor")
    assert error_line(lmstack("list", "--status", "", db=db)).startswith("lmstack agent: error: status '' is not")
    assert error_line(lmstack("list", "--limit", "0", db=db)).endswith("list at least 1 run (default 50)")


def test_list_columns_line_up_under_long_run_ids(lmstack, tmp_path):
    """An eval's agent runs have ids like 'eval-nightly-arith-002-e0': a fixed 14-character column pushed the
    status and every column after it right, row by row, under a header that no longer matched."""
    from lmstack.agent.store import create_run

    db = tmp_path / "x.db"
    conn = open_database(db)
    for run_id in ("r1", "eval-nightly-arith-002-e0"):
        create_run(conn, run_id, "add", {})
        conn.execute("UPDATE agent_runs SET status = 'completed' WHERE id = ?", (run_id,))
    conn.commit()
    header, *rows = lmstack("list", db=db).stdout.splitlines()
    assert [row.index("completed") for row in rows] == [header.index("STATUS")] * 2
    assert {row.index(" add") for row in rows} == {header.index(" TASK")}
