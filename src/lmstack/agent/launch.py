"""Build an agent from its saved configuration, and the run lifecycle: start, resume, approve."""

from __future__ import annotations

import os
import sqlite3
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lmstack.agent.budget import unpriced_dollar_budget
from lmstack.agent.builtin_tools import absolute_tool_paths, load_tools
from lmstack.agent.client import ModelClient, OpenAIClient, RetryPolicy
from lmstack.agent.memory import MemoryStore
from lmstack.agent.runtime import AgentRuntime
from lmstack.agent.settings import AgentConfig
from lmstack.agent.store import RunRecord, create_run, get_run, open_agent_tables
from lmstack.agent.tools import ToolRegistry
from lmstack.config import from_dict, to_dict
from lmstack.db import connect, existing_database, lmstack_home, transaction
from lmstack.errors import LmstackError
from lmstack.openai_url import ModelListingError, first_listed, is_http_url
from lmstack.run_ids import check_run_id


def open_database(path: str | Path | None = None) -> sqlite3.Connection:
    return open_agent_tables(connect(path))


def open_existing_database(path: str | Path | None = None) -> sqlite3.Connection:
    """The database of the runs that `list`, `trace`, `approve` and `resume` act on: an existing one lmstack made
    (db.existing_database); an eval run's database gets the agent tables."""
    return open_database(existing_database(path, "`lmstack agent run` creates it: pass the --db its runs were "
                                                 "recorded in"))


@dataclass(frozen=True)
class ClientFlags:
    """The calling command's own words for its errors: the flag that gives the model, the one that names it at a URL,
    another way to give the key than $api_key_env (none: only the variable), and how to give a slow model more
    time. The defaults are `lmstack agent run`'s; `eval run` has its own, and another set for its --judge."""
    model: str = "--model"
    model_name: str = "--model-name"
    key_fix: str = "or read it from another variable with --set api_key_env=NAME"
    timeout_fix: str = "a slower model needs a new run with --set timeout_s=SECONDS"


def build_client(config: AgentConfig, flags: ClientFlags = ClientFlags()) -> ModelClient:
    if is_http_url(config.model):
        return OpenAIClient(config.model, config.model_name or first_model_id(config, flags),
                            os.environ.get(config.api_key_env), config.timeout_s,
                            RetryPolicy(max_attempts=config.max_attempts), config.stream, flags.timeout_fix,
                            config.api_key_env)
    if Path(config.model).is_dir():
        from lmstack.agent.engine_client import EngineClient

        return EngineClient.from_checkpoint(config.model)
    raise LmstackError(f"{flags.model} '{config.model}': expected an http(s):// base URL of an OpenAI-compatible "
                       f"endpoint (e.g. http://127.0.0.1:8000/v1) or a checkpoint directory")


def first_model_id(config: AgentConfig, flags: ClientFlags = ClientFlags()) -> str:
    return first_listed(config.model, config.api_key_env, config.timeout_s, prefix=f"{flags.model} {config.model}: ",
                        key_fix=flags.key_fix, model_flag=flags.model_name).id


def build_runtime(conn: sqlite3.Connection, run_id: str, show_progress: bool = False,
                  client: ModelClient | None = None, workspace: Path | None = None) -> AgentRuntime:
    """The agent of a recorded run, from its saved configuration; `client` and `workspace` when already made."""
    record = get_run(conn, run_id)
    config = from_dict(AgentConfig, record.config)
    memory = MemoryStore(conn)
    registry = ToolRegistry(load_tools(config.tools))
    return AgentRuntime(conn, run_id, config, client or build_client(config), registry,
                        workspace or make_workspace(config.workspace), memory, show_progress)


def make_workspace(path: str) -> Path:
    """The directory the file tools are confined to, created if missing."""
    workspace = Path(path)
    if workspace.exists() and not workspace.is_dir():
        raise LmstackError(f"--workspace '{workspace}' is a file; pass a directory for the file tools (it is created "
                           "when missing)")
    try:
        workspace.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise LmstackError(f"--workspace '{workspace}' cannot be created ({err.strerror}); pass a writable "
                           "directory") from None
    return workspace


def check_model_reachable(config: AgentConfig) -> None:
    """Raise (the cause and its fix) when this process cannot reach the model endpoint of a run with `config`: its
    key is not set here, or the server is down. For a process that would resume someone else's run (the dashboard):
    the resume would fail the run for good, where the run's own shell would have resumed it. One short try: it runs
    while a person waits."""
    if not is_http_url(config.model):
        return
    try:
        first_listed(config.model, config.api_key_env, timeout_s=10, max_retries=0)
    except ModelListingError as err:
        if not (err.status == 404 and config.model_name):  # no listing there, but the server answered: fine
            raise


def start_run(conn: sqlite3.Connection, task: str, config: AgentConfig, run_id: str | None = None,
              show_progress: bool = False) -> RunRecord:
    run_id = check_run_id(run_id) if run_id is not None else uuid.uuid4().hex[:12]
    tools = load_tools(config.tools)  # a bad --tools entry fails before the run exists
    if not config.workspace:
        config.workspace = str(lmstack_home() / "workspaces" / run_id)
    # Saved absolute: `resume`, `approve` and the dashboard may run from another directory.
    config.workspace = str(Path(config.workspace).resolve())
    config.tools = absolute_tool_paths(config.tools)
    if not is_http_url(config.model) and Path(config.model).is_dir():
        config.model = str(Path(config.model).resolve())
    if is_http_url(config.model) and not config.model_name:
        config.model_name = first_model_id(config)
    # What can fail to load (a checkpoint, the workspace) fails before the run exists: no run is left behind
    # as `running` that can never run.
    client = build_client(config)
    workspace = make_workspace(config.workspace)
    check_prompt_fits(client, config, task, ToolRegistry(tools).schemas())
    unpriced = unpriced_dollar_budget(client.model, config.budget)
    if unpriced:  # the run goes on: the other budgets still hold
        print(f"warning: {unpriced}", file=sys.stderr)
    create_run(conn, run_id, task, to_dict(config))
    return build_runtime(conn, run_id, show_progress, client, workspace).run()


def check_prompt_fits(client: ModelClient, config: AgentConfig, task: str, schemas: list[dict]) -> None:
    """Where prompts are counted exactly (in-process): refuse a run whose system prompt, task and tool schemas alone
    fill the model's context. It could make no call, and a resume would fail the same way."""
    count_tokens = getattr(client, "count_tokens", None)
    if count_tokens is None:
        return
    context = min(config.context_tokens, client.context_tokens)
    head = [{"role": "system", "content": config.system_prompt}, {"role": "user", "content": task}]
    prompt_tokens = count_tokens(head, schemas or None)
    if prompt_tokens >= context:
        raise LmstackError(f"--tools {','.join(config.tools) or '(none)'}: the system prompt, the task and the tools' "
                           f"schemas take {prompt_tokens} tokens, which fills the {context}-token context of model "
                           f"'{client.model}', leaving no room for a reply; pass fewer --tools (e.g. calculator alone) "
                           "or a shorter task")


def resume_run(conn: sqlite3.Connection, run_id: str, show_progress: bool = False) -> RunRecord:
    return build_runtime(conn, run_id, show_progress).run()


def pending_approvals(conn: sqlite3.Connection, run_id: str, call_key: str | None = None) -> list[str]:
    """The call keys of the run's pending approvals (all, or the one with `call_key`); an error when there is none."""
    get_run(conn, run_id)
    rows = conn.execute("SELECT call_key FROM agent_approvals WHERE run_id = ? AND decision = 'pending'",
                        (run_id,)).fetchall()
    keys = [r["call_key"] for r in rows if call_key is None or r["call_key"] == call_key]
    if not keys:
        raise LmstackError(f"run '{run_id}' has no pending approval{f' for {call_key}' if call_key else ''}; "
                           f"`lmstack agent trace {run_id}` shows its state")
    return keys


def decide_approvals(conn: sqlite3.Connection, run_id: str, approve: bool, call_key: str | None,
                     rebuild: Callable[[], AgentRuntime | None]) -> tuple[list[str], AgentRuntime | None]:
    """Decide the run's pending calls (all, or the one with `call_key`); the calls decided, and the agent that resumes
    the run (None: the caller does not resume it). `rebuild` makes that agent after the calls are found and before
    they are decided: a run that cannot resume (`rebuild` raises: a tool file that no longer loads, a model out of
    reach) keeps its calls pending, rather than decided and never resumed."""
    keys = pending_approvals(conn, run_id, call_key)  # that error first: cheaper than a rebuild
    runtime = rebuild()
    decided = record_decisions(conn, run_id, approve, keys)
    if not decided:  # a second click, or `agent approve` elsewhere, decided them during the rebuild and resumes the run
        if runtime is not None and runtime.conn is not conn:
            runtime.conn.close()
        raise LmstackError(f"run '{run_id}': {', '.join(keys)} was decided meanwhile by another approval, which "
                           f"resumes the run; `lmstack agent trace {run_id}` shows its state")
    return decided, runtime


def record_decisions(conn: sqlite3.Connection, run_id: str, approve: bool, keys: list[str]) -> list[str]:
    """Decide the pending calls with these keys (from `pending_approvals`; `decide_approvals` does both, with the
    rebuild between); the keys this call decided. A call decided elsewhere meanwhile keeps that decision, and is not
    among them: of two approvals of one call, only one may resume the run, or the approved tool runs twice."""
    with transaction(conn):
        return [key for key in keys
                if conn.execute("UPDATE agent_approvals SET decision = ?, decided_at = strftime('%s','now') "
                                "WHERE run_id = ? AND call_key = ? AND decision = 'pending'",
                                ("approved" if approve else "denied", run_id, key)).rowcount]
