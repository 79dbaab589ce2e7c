"""A run started in one directory is approved and resumed from another: its tool files and checkpoint are saved
absolute. An approval that cannot resume the run decides nothing, and a waiting run whose calls are decided says
to resume it, not to approve it. `lmstack agent` through its CLI, each call in the directory a user would be in (in
this process, whose working directory the test moves: a new interpreter per call took seconds of make test)."""

from pathlib import Path

import pytest

from agent_helpers import call
from cli_testing import one_line_error
from lmstack.agent.launch import open_database, pending_approvals, record_decisions
from lmstack.agent.store import get_run
from lmstack.agent.testing.scripted_server import ScriptedServer
from lmstack.model.checkpoint import save_model_dir
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.tokenizer import Tokenizer

SCRIPT = {"scripts": {"delete": [{"tool_calls": [call("delete_db", {"name": "staging"})]},
                                 {"content": "Done with staging."}]}}
TOOL_FILE = '''
from lmstack.agent.tools import tool


@tool(requires_approval=True)
def delete_db(name: str) -> str:
    """Delete a database.

    Args:
        name: which one.
    """
    return f"deleted {name}"
'''


@pytest.fixture(scope="module")
def server():
    with ScriptedServer(SCRIPT) as s:
        yield s


@pytest.fixture
def agent(cli, monkeypatch):
    """`lmstack agent ARGS --db DB` run from the directory `cwd`."""
    def run(*args, cwd: Path, db: Path):
        monkeypatch.chdir(cwd)
        return cli("agent", *args, "--db", db)

    return run


@pytest.fixture
def waiting_run(agent, server, tmp_path):
    """`cd agent; lmstack agent run "del" --tools mytools.py:delete_db`, paused for approval; and another dir."""
    run_dir, elsewhere = tmp_path / "agent", tmp_path / "elsewhere"
    run_dir.mkdir()
    elsewhere.mkdir()
    (run_dir / "mytools.py").write_text(TOOL_FILE)
    db = tmp_path / "lmstack.db"
    run = agent("run", "del", "--model", server.base_url, "--model-name", "delete", "--tools", "mytools.py:delete_db",
                "--run-id", "deny2", "--workspace", "ws", cwd=run_dir, db=db)
    assert run.returncode == 0 and run.stdout.startswith("run deny2: waiting"), run.stdout + run.stderr
    return db, run_dir, elsewhere


def decisions(db: Path) -> list[str]:
    return [r["decision"] for r in open_database(db).execute("SELECT decision FROM agent_approvals")]


def test_a_run_with_a_relative_tool_file_is_approved_from_another_directory(agent, waiting_run):
    db, run_dir, elsewhere = waiting_run
    assert get_run(open_database(db), "deny2").config["tools"] == [f"{(run_dir / 'mytools.py').resolve()}:delete_db"]
    approved = agent("approve", "deny2", cwd=elsewhere, db=db)
    assert approved.returncode == 0, approved.stderr
    lines = approved.stdout.splitlines()
    assert lines[0] == "approved: step0/tool0" and lines[1].startswith("run deny2: completed (2 steps")
    assert lines[2] == "Done with staging."


def test_an_approval_that_cannot_resume_the_run_decides_nothing(agent, waiting_run):
    # The run used to be approved first: the resume then failed, and the run was left `waiting` on a decided call
    # that `approve` no longer found ("no pending approval") while `trace` still said "approval needed".
    db, run_dir, elsewhere = waiting_run
    tool_file = (run_dir / "mytools.py").resolve()
    tool_file.rename(run_dir / "moved.py")
    refused = agent("approve", "deny2", cwd=elsewhere, db=db)
    assert one_line_error(refused, "agent") == (
        f"lmstack agent: error: --tools '{tool_file}:delete_db': cannot import '{tool_file}': [Errno 2] No such file "
        f"or directory: '{tool_file}'")
    assert decisions(db) == ["pending"]
    assert agent("trace", "deny2", cwd=elsewhere, db=db).stdout.splitlines()[0] == (
        "run deny2: waiting -- approval needed for delete_db (step0/tool0): run `lmstack agent approve deny2` "
        "(or --deny)")
    (run_dir / "moved.py").rename(tool_file)
    assert agent("approve", "deny2", cwd=elsewhere, db=db).returncode == 0 and decisions(db) == ["approved"]


def test_a_waiting_run_whose_calls_are_decided_says_to_resume_it(agent, waiting_run):
    # As a dashboard asked to decide without resuming (`"resume": false`) leaves it.
    db, _, elsewhere = waiting_run
    conn = open_database(db)
    record_decisions(conn, "deny2", False, pending_approvals(conn, "deny2"))
    resume_hint = ("its tool calls are decided, but the run was not resumed: `lmstack agent resume deny2` "
                   "continues it")
    assert agent("trace", "deny2", cwd=elsewhere, db=db).stdout.splitlines()[0] == f"run deny2: waiting -- {resume_hint}"
    listing = agent("list", cwd=elsewhere, db=db).stdout.splitlines()
    assert listing[1].startswith("deny2          waiting ") and listing[2].strip() == resume_hint
    resumed = agent("resume", "deny2", cwd=elsewhere, db=db)
    assert resumed.returncode == 0 and resumed.stdout.startswith("run deny2: completed"), resumed.stderr


def test_a_checkpoint_given_by_a_relative_path_is_saved_absolute(agent, tmp_path):
    tokenizer = Tokenizer.train(["Agents call tools and answer. " * 20] * 4, vocab_size=300, show_progress=False,
                                min_frequency=1)
    model = build_model(ModelConfig(arch="llama", vocab_size=320, block_size=1024, n_layer=1, n_head=2, n_embd=32))  # fits the prompt
    checkpoint = save_model_dir(tmp_path / "runs" / "x", model, tokenizer)
    run = agent("run", "hi", "--model", "runs/x", "--run-id", "ck", "--set", "max_output_tokens=4", cwd=tmp_path,
                db=tmp_path / "lmstack.db")
    assert run.stdout.startswith("run ck: "), run.stdout + run.stderr  # whatever the random model answers
    assert get_run(open_database(tmp_path / "lmstack.db"), "ck").config["model"] == str(checkpoint.resolve())
