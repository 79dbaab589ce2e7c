"""The agent runtime as a solver: tools, memory, budgets and monitors, on the evaluated model.

Each (sample, epoch) is one durable agent run with a deterministic id, journaled in the eval's
database, so resuming an interrupted eval resumes its half-finished agent runs too. Every model call
goes through the eval's cache (the runtime runs on `ctx.model`); tool calls and monitor events are
copied onto the sample's event log, where the `hallucination` scorer and the report read them.
"""

from __future__ import annotations

import re
from typing import Any

from lmstack.agent.budget import BudgetConfig
from lmstack.agent.builtin_tools import load_tools
from lmstack.agent.journal import Journal
from lmstack.agent.launch import open_database
from lmstack.agent.memory import MemoryStore
from lmstack.agent.runtime import AgentRuntime
from lmstack.agent.settings import AgentConfig, MonitorConfig
from lmstack.agent.store import create_run, get_run
from lmstack.agent.tools import ToolRegistry
from lmstack.agent.tracing import load_events
from lmstack.config import from_dict, to_dict
from lmstack.db import lmstack_home
from lmstack.errors import LmstackError
from lmstack.evals import arguments
from lmstack.evals.sample import TaskState
from lmstack.evals.solvers import SolveContext
from lmstack.evals.task import ArgumentError, solver


class AgentRunError(LmstackError):
    """The agent run behind a sample ended without an answer to score."""


DEFAULT_SYSTEM = "You are a careful assistant. Use the tools to find facts and compute; do not invent them."


@solver
def agent(tools: list[str] | None = None, system_prompt: str = DEFAULT_SYSTEM, max_steps: int = 8,
          monitors: dict[str, Any] | None = None, memory: bool = False, max_dollars: float | None = None):
    """Run the agent on the sample's input; its final answer is the output."""
    tool_specs = arguments.strings(tools, "tools") if tools is not None else ["calculator"]
    max_steps = arguments.number(max_steps, "max_steps", 1, integer=True)
    try:  # built here, not per sample: an unknown tool or monitor setting would fail every sample of the run
        load_tools(tool_specs)
        monitor_config = from_dict(MonitorConfig, monitors or {}, prefix="monitors.")
    except LmstackError as err:
        raise ArgumentError(str(err)) from None

    def solve(state: TaskState, ctx: SolveContext) -> TaskState:
        config = AgentConfig(model=ctx.model.model, model_name=ctx.model.model, tools=tool_specs,
                             system_prompt=system_prompt, temperature=ctx.config.temperature,
                             max_output_tokens=ctx.config.max_tokens,
                             budget=BudgetConfig(max_steps=max_steps, max_dollars=max_dollars),
                             monitors=monitor_config)
        conn = open_database(ctx.db_path)
        try:
            run_id, exists = _agent_run_id(conn, f"eval-{ctx.run_id}-{state.sample.id}-e{state.epoch}")
            workspace = lmstack_home() / "workspaces" / re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
            workspace.mkdir(parents=True, exist_ok=True)
            config.workspace = str(workspace)
            if not exists:
                create_run(conn, run_id, state.sample.input_text(), to_dict(config))
            runtime = AgentRuntime(conn, run_id, config, ctx.model, ToolRegistry(load_tools(tool_specs)),
                                   workspace, MemoryStore(conn) if memory else None)
            record = runtime.run()
            _copy_trace(conn, run_id, state)
        finally:
            conn.close()
        if record.status in ("failed", "waiting"):  # no answer to score: the model failed, or a tool awaits approval
            raise AgentRunError(f"agent run {run_id} {record.status}: {record.stop_reason}")
        state.output = record.final_answer or ""
        state.metadata.update(agent_run=run_id, agent_status=record.status, agent_stop_reason=record.stop_reason,
                              agent_steps=record.steps)
        return state
    return solve


def _agent_run_id(conn, base: str) -> tuple[str, bool]:
    """The sample's agent run id and whether that run exists: an unfinished one is resumed, a finished one
    replayed from its journal, a failed one (e.g. the endpoint was down) left as it is and tried afresh under
    the next id."""
    run_id, attempt = base, 0
    while (row := conn.execute("SELECT status FROM agent_runs WHERE id = ?", (run_id,)).fetchone()) is not None \
            and row["status"] == "failed":
        attempt += 1
        run_id = f"{base}-retry{attempt}"
    return run_id, row is not None


def _copy_trace(conn, run_id: str, state: TaskState) -> None:
    for entry in Journal(conn, run_id).entries():
        if entry.kind == "tool" and entry.response is not None:
            state.tool_calls.append({"name": entry.response["name"], "arguments": entry.request.get("arguments")})
            state.log("tool_call", key=entry.key, name=entry.response["name"], arguments=entry.request.get("arguments"),
                      ok=entry.response["ok"], result=entry.response["content"])
    for event in load_events(conn, run_id):
        state.log("monitor", monitor=event["monitor"], action=event["action"], message_key=event["message_key"],
                  start=event["start"], end=event["end"], text=event["text"], detail=event["detail"])
    state.log("agent_run", run_id=run_id, status=get_run(conn, run_id).status)
