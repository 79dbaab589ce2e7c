"""The agent loop: model call -> monitors -> tool calls (in parallel) -> repeat, durable at every step.

Each step:
  1. check the budgets (a run over budget never makes the next call);
  2. call the model (journaled; replayed on resume) on the conversation fitted to the context;
  3. run the monitors on the new message; per policy flag it, re-ask with feedback, or stop;
  4. no tool calls: the message is the final answer; otherwise check for loops, ask for approvals
     (pausing the run as `waiting` if one is missing), and run the calls concurrently (journaled);
  5. stop if no step has made progress for `loops.no_progress_limit` steps.
`run()` is also `resume`: it replays the journal from the start and continues where it stopped -- for a failed
run, at the call the endpoint never answered, or at the start of a step whose replies were all empty (set aside).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import os
import sqlite3
import time
from pathlib import Path

from tqdm.auto import tqdm

from lmstack.agent.budget import Spend, call_cost, over_budget
from lmstack.agent.client import ContextLengthError, ModelCallError, ModelClient, ModelResponse
from lmstack.agent.context import approx_tokens, cut_middle, fit_context
from lmstack.agent.executing import EXECUTING
from lmstack.agent.journal import SET_ASIDE, Journal
from lmstack.agent.memory import MemoryStore
from lmstack.agent.monitors import MONITORS, MonitorEvent, PastCall, StepView
from lmstack.agent.settings import AgentConfig
from lmstack.agent.store import (RESUMABLE, RunRecord, claim_run, decided_while_waiting, get_run, update_run,
                                 waiting_reason)
from lmstack.agent.tools import PreparedCall, ToolContext, ToolRegistry, ToolResult
from lmstack.agent.tracing import Tracer
from lmstack.db import transaction
from lmstack.errors import LmstackError


class StopRun(Exception):
    """Ends the loop with a terminal (or waiting) status."""

    def __init__(self, status: str, reason: str, answer: str | None = None, redo_step: int | None = None):
        super().__init__(reason)
        self.status, self.reason, self.answer = status, reason, answer
        self.redo_step = redo_step  # a step whose calls are set aside, so that a resume makes them again


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run: still a KeyboardInterrupt to any caller, carrying the run and how to continue it (the
    command prints it; the process may have made the run's id up itself)."""

    def __init__(self, run_id: str, reason: str):
        super().__init__(reason)
        self.run_id, self.reason = run_id, reason


# How often one model call is fitted again after the endpoint refused its prompt as too long: once with the
# server's own count is enough; the others are for servers that give no count (each assumes 25% more).
MAX_REFITS = 3


class AgentRuntime:
    def __init__(self, conn: sqlite3.Connection, run_id: str, config: AgentConfig, client: ModelClient,
                 registry: ToolRegistry, workspace: Path, memory: MemoryStore | None = None,
                 show_progress: bool = False):
        self.conn, self.run_id, self.config = conn, run_id, config
        self.show_progress = show_progress
        self.client, self.registry, self.workspace, self.memory = client, registry, workspace, memory
        self.journal = Journal(conn, run_id)
        self.tracer = Tracer(conn, run_id)
        self.scope = (config.agent_name, config.user)
        # What the ~4-characters-per-token estimate of the messages missed in the last prompt the endpoint counted:
        # the tool schemas and the chat template's tokens (over 100 tokens on a small model). None until a first
        # call is counted; until then the schemas are estimated like the messages.
        self.uncounted_prompt_tokens: int | None = None
        self.context_from_error: int | None = None  # the context a refusal named (an endpoint that lists none)
        self.claimed_here = False  # whether this runtime holds the run in `EXECUTING`

    # ---- the loop ---------------------------------------------------------------------------------
    def claim_here(self) -> bool:
        """Take the run for this runtime among this process's threads (see `executing`); False when another thread
        executes it. `run` claims it when the caller has not: the dashboard claims before it starts a thread, so that
        a second approval learns at once that the run already has an executor."""
        if not self.claimed_here:
            self.claimed_here = EXECUTING.claim(self.run_id)
        return self.claimed_here

    def run(self) -> RunRecord:
        """Execute the run until it ends or waits; again when a call it paused on was decided meanwhile (a decision
        recorded while this process executed the run starts no second executor: this one takes it up)."""
        if not self.claim_here():
            raise LmstackError(f"run '{self.run_id}' is being executed by another thread of this process "
                               f"({os.getpid()}); wait for it to end or to pause for an approval, then resume again")
        released = False
        try:
            while not released:
                record = self._run_claimed()
                released = EXECUTING.release(self.run_id, keep=lambda: decided_while_waiting(self.conn, self.run_id))
            return record
        finally:
            if not released:
                EXECUTING.release(self.run_id)
            self.claimed_here = False

    def _run_claimed(self) -> RunRecord:
        """One pass of `run`: claim the run in the database, replay the journal, go on until it ends or waits."""
        record = get_run(self.conn, self.run_id)
        if record.status not in RESUMABLE or not claim_run(self.conn, self.run_id):
            return get_run(self.conn, self.run_id)
        self.record = record
        self.session_start, self.active_before = time.monotonic(), record.active_seconds
        self.spend = Spend()
        for entry in self.journal.entries():  # set aside, never replayed, but paid for: they count toward the budget
            if SET_ASIDE in entry.key:
                self._add_spend(ModelResponse.from_dict(entry.response))
        self.past_calls: list[PastCall] = []
        self.call_counts: dict[str, int] = {}
        self.seen_results: set[str] = set()
        self.steps_started = 0
        self.last_prompt_tokens = 0
        messages = [{"role": "system", "content": self.config.system_prompt}, {"role": "user", "content": record.task}]
        self.progress = tqdm(total=self.config.budget.max_steps, desc=f"agent {self.run_id}", unit="step",
                             disable=not self.show_progress)
        try:
            self._loop(messages)
        except StopRun as stop:
            self._finish(stop.status, stop.reason, stop.answer, stop.redo_step)
        except ModelCallError as err:
            self._finish("failed", f"{err}; `lmstack agent resume {self.run_id}` continues {err.resume_when}", None)
        except BaseException as err:  # Ctrl-C, SIGTERM's handler, a bug: the run stays `running`, resumable,
            resume = f"`lmstack agent resume {self.run_id}`"  # and says why it stopped
            reason = (f"stopped by Ctrl-C; continue it with {resume}" if isinstance(err, KeyboardInterrupt) else
                      f"interrupted ({type(err).__name__}: {err}); {resume} continues from the last completed step")
            try:
                update_run(self.conn, self.run_id, stop_reason=reason)
            except sqlite3.Error:
                pass  # the database itself failed: the error being raised says so
            if isinstance(err, KeyboardInterrupt):
                raise RunInterrupted(self.run_id, reason) from None
            raise
        finally:
            self.progress.close()
        return get_run(self.conn, self.run_id)

    def _loop(self, messages: list[dict]) -> None:
        steps_without_progress = 0
        for step in itertools.count():  # budgets, loops and the final answer end it
            self.spend.steps = step
            response = self._model_step(messages, step)
            if not response.tool_calls:
                raise StopRun("completed", "final answer", response.text)
            self._check_loops(response)
            results = self._run_tools(step, response)
            messages.extend(r.message() for r in results)
            steps_without_progress = 0 if self._made_progress(response, results) else steps_without_progress + 1
            self._save_progress(step + 1)
            self.progress.update(1)
            self.progress.set_postfix(tokens=self.spend.tokens, cost=f"${self.spend.cost_usd:.4f}",
                                      tools=",".join(c.name for c in response.tool_calls)[:40])
            if steps_without_progress >= self.config.loops.no_progress_limit:
                raise StopRun("no_progress", f"no new successful tool result for {steps_without_progress} steps")

    def _model_step(self, messages: list[dict], step: int) -> ModelResponse:
        monitors = self.config.monitors
        for attempt in range(monitors.max_retries + 1):
            key = f"step{step}/model{attempt}"
            response = self._model_call(key, f"step{step}", messages)
            self.steps_started = step + 1
            messages.append(response.assistant_message())
            samples = self._samples(key, step, messages[:-1]) if not response.tool_calls else []
            events = self._monitor(key, response, messages, samples)
            policies = {getattr(monitors, e.monitor) for e in events}
            if "stop" in policies:
                flagged = [e for e in events if getattr(monitors, e.monitor) == "stop"][0]
                raise StopRun("stopped_by_monitor", f"{flagged.monitor}: {flagged.text!r}: {flagged.detail}")
            if not response.tool_calls and not response.text.strip():
                # Neither an answer nor a call: re-asked like a monitor's retry, then the run fails saying so,
                # rather than `completed` with a blank answer.
                if attempt == monitors.max_retries:
                    raise StopRun("failed", f"the model's reply at step {step} was empty (finish_reason "
                                  f"{response.finish_reason!r}) after {attempt + 1} tries: no answer and no tool "
                                  "call; check the model and max_output_tokens (a new run takes new settings); "
                                  f"`lmstack agent resume {self.run_id}` redoes the step", redo_step=step)
                messages.append({"role": "user", "content": "Your last message was empty. Answer the task, or "
                                 "call one of the tools."})
                continue
            # Re-asking only fits a message without tool calls: a call must be answered by its result.
            if "retry" not in policies or response.tool_calls or attempt == monitors.max_retries:
                return response
            problems = "; ".join(f"{e.text!r} ({e.detail})" for e in events if getattr(monitors, e.monitor) == "retry")
            messages.append({"role": "user", "content": f"Monitor feedback: your last message has problems: {problems}. "
                             "Use the tools to check, or answer without those claims."})
        raise AssertionError("unreachable")

    # ---- model calls ------------------------------------------------------------------------------
    def context_view(self, messages: list[dict]) -> tuple[list[dict], list[dict] | None]:
        """The conversation as sent to the model, fitted to its context, and the tool schemas sent with it."""
        view, tools, _ = self._fitted(messages)
        return view, tools

    def _fitted(self, messages: list[dict]) -> tuple[list[dict], list[dict] | None, int | None]:
        """`context_view`, and the reply's max_tokens: max_output_tokens, or less where the latest turn took part of
        its room (None: the endpoint's default, the rest of the context)."""
        context, reserve, least = self._reply_room()
        tools = self.registry.schemas() or None
        count = self._prompt_counter(tools)
        # When the older history cannot give way, the latest turn (the call just made and its result) may take the
        # reply room down to `least`: on a small model the schemas and the task leave no room for both.
        view = fit_context(messages, max(1, context - reserve), count, reserve - least)
        if self.config.max_output_tokens is None:
            return view, tools, None
        return view, tools, max(1, min(self.config.max_output_tokens, context - count(view)))

    def _reply_room(self) -> tuple[int, int, int]:
        """The context, the room kept for the reply, and the least room the latest turn may leave it.
        Without max_output_tokens the reply gets a quarter of the context (context - prompt is the most it may
        use); at least an eighth, enough for a tool call or a short answer, and proportional, so that a model with
        a long context is not left a few tokens to answer in."""
        context = min(self.config.context_tokens, getattr(self.client, "context_tokens", self.config.context_tokens))
        if self.context_from_error is not None:
            context = min(context, self.context_from_error)
        reserve = self.config.max_output_tokens or context // 4
        return context, reserve, max(1, min(reserve, context // 8))

    def _prompt_counter(self, tools: list[dict] | None):
        """Prompt length of a view: exact where the client knows its tokenizer (the engine client), tool schemas
        included (on a small model they can be half of the context); else the ~4-characters-a-token estimate of the
        messages, corrected by the endpoint's own count of the last prompt (so only the messages added since are
        estimated alone); before any count, the schemas are estimated like the messages."""
        exact_count = getattr(self.client, "count_tokens", None)
        if exact_count:
            return lambda view: exact_count(view, tools)
        uncounted = self.uncounted_prompt_tokens
        if uncounted is None:
            uncounted = len(json.dumps(tools)) // 4 if tools else 0
        return lambda view: approx_tokens(view) + uncounted

    def _learn_prompt_length(self, err: ContextLengthError, view: list[dict], tools: list[dict] | None) -> None:
        """After the endpoint refused `view` as too long: what it says of its count and context, so that the next
        fit is right. Chosen over counting every prompt through a tokenize endpoint (vLLM's /tokenize, which
        OpenAI's API and ours lack) or a local copy of the model's tokenizer (which an HTTP endpoint does not give):
        each error is one extra request, and on our server, vLLM and OpenAI the message gives the exact count."""
        if err.context_tokens is not None:
            self.context_from_error = err.context_tokens
        estimate = self._prompt_counter(tools)(view)
        counted = err.prompt_tokens if err.prompt_tokens is not None else estimate + max(1, estimate // 4)
        self.uncounted_prompt_tokens = max(0, counted - approx_tokens(view))

    def _model_call(self, key: str, step_key: str, messages: list[dict], temperature: float | None = None
                    ) -> ModelResponse:
        temperature = self.config.temperature if temperature is None else temperature
        entry = self.journal.get(key)
        for refit in range(MAX_REFITS + 1):
            view, tools, max_tokens = self._fitted(messages)
            if entry is not None and entry.status == "completed":
                break
            # A prompt only grows, so the last call's count is a floor for the next one's.
            self._check_budget(max(approx_tokens(view), self.last_prompt_tokens))
            request = {"messages": view, "temperature": temperature, "max_tokens": max_tokens}
            self.journal.start(key, "model", request)
            try:
                response = self.client.complete(view, tools, temperature=temperature, max_tokens=max_tokens,
                                                logprobs=self.config.logprobs)
            except ContextLengthError as err:
                if refit == MAX_REFITS:
                    raise
                self._learn_prompt_length(err, view, tools)
                continue
            self.journal.complete(key, response.to_dict(), request if refit else None)  # a refit: what was sent
            entry = self.journal.get(key)
            break
        response = ModelResponse.from_dict(entry.response)
        self.last_prompt_tokens = response.usage.prompt_tokens
        self.uncounted_prompt_tokens = max(0, response.usage.prompt_tokens - approx_tokens(view))
        cost = self._add_spend(response)
        self.tracer.record(key, step_key, f"model {key}", "model", entry.started_at, entry.completed_at, {
            "model": response.model or self.client.model, "prompt_tokens": response.usage.prompt_tokens,
            "completion_tokens": response.usage.completion_tokens, "cost_usd": cost,
            "tool_calls": len(response.tool_calls), "finish_reason": response.finish_reason})
        return response

    def _add_spend(self, response: ModelResponse) -> float:
        """Count a call's tokens and cost toward the run's totals and budget; its cost."""
        cost = call_cost(self.client.model, self.config.budget, response.usage.prompt_tokens,
                         response.usage.completion_tokens)
        self.spend.prompt_tokens += response.usage.prompt_tokens
        self.spend.completion_tokens += response.usage.completion_tokens
        self.spend.cost_usd += cost
        return cost

    def _check_budget(self, next_prompt_tokens: int) -> None:
        self.spend.wall_s = self.active_before + time.monotonic() - self.session_start
        reason = over_budget(self.spend, self.config.budget, self.client.model, next_prompt_tokens)
        if reason:
            raise StopRun("budget_exceeded", reason)

    def _samples(self, key: str, step: int, messages: list[dict]) -> list[str]:
        monitors = self.config.monitors
        if monitors.self_consistency == "off":
            return []
        return [self._model_call(f"{key}/sample{i}", f"step{step}", messages, monitors.sample_temperature).text
                for i in range(monitors.self_consistency_k)]

    # ---- monitors ---------------------------------------------------------------------------------
    def _monitor(self, key: str, response: ModelResponse, messages: list[dict], samples: list[str]
                 ) -> list[MonitorEvent]:
        evidence = [m["content"] for m in messages[:-1] if m["role"] in ("system", "user", "tool") and m.get("content")]
        if self.memory is not None:
            evidence += self.memory.all_texts(self.scope)
        view = StepView(response.text, response.tool_calls, response.logprobs, evidence, list(self.past_calls),
                        {n: t.field_names() for n, t in self.registry.tools.items()},
                        {n: t.actions for n, t in self.registry.tools.items()}, samples)
        events = []
        for name, check in MONITORS.items():
            policy = getattr(self.config.monitors, name)
            if policy == "off":
                continue
            for i, event in enumerate(check(view)):
                events.append(event)
                message_key = key if event.target == "content" else f"{key}#{event.target}"
                self.tracer.event(f"{key}/{name}/{i}", key, name, policy, message_key, event.start, event.end,
                                  event.text, event.detail)
        return events

    # ---- tools ------------------------------------------------------------------------------------
    def _check_loops(self, response: ModelResponse) -> None:
        for call in response.tool_calls:
            try:
                canonical = call.name + json.dumps(json.loads(call.arguments or "{}"), sort_keys=True)
            except json.JSONDecodeError:
                canonical = call.name + call.arguments
            self.call_counts[canonical] = self.call_counts.get(canonical, 0) + 1
            if self.call_counts[canonical] >= self.config.loops.repeat_limit:
                raise StopRun("loop_detected", f"tool call {call.name}({call.arguments}) repeated "
                                               f"{self.call_counts[canonical]} times")

    def _run_tools(self, step: int, response: ModelResponse) -> list[ToolResult]:
        results: dict[int, ToolResult] = {}
        to_run: dict[int, PreparedCall] = {}
        for i, call in enumerate(response.tool_calls):
            key = f"step{step}/tool{i}"
            entry = self.journal.get(key)
            if entry is not None and entry.status == "completed":
                results[i] = ToolResult(**entry.response)
                self._trace_tool(key, step, entry)
                continue
            prepared = self.registry.prepare(call.id, call.name, call.arguments)
            if isinstance(prepared, ToolResult):
                results[i] = self._journal_result(key, step, {"name": call.name, "arguments": call.arguments}, prepared)
            else:
                to_run[i] = prepared
        self._ask_approvals(step, to_run, results)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(to_run))) as pool:
            futures = {i: pool.submit(self._execute, f"step{step}/tool{i}", step, p) for i, p in to_run.items()}
            results.update({i: f.result() for i, f in futures.items()})
        for i, call in enumerate(response.tool_calls):
            try:
                arguments = json.loads(call.arguments or "{}")
            except json.JSONDecodeError:
                arguments = {"__raw__": call.arguments}
            self.past_calls.append(PastCall(call.name, arguments if isinstance(arguments, dict) else {}, results[i].ok))
        return [results[i] for i in range(len(response.tool_calls))]

    def _ask_approvals(self, step: int, to_run: dict[int, PreparedCall], results: dict[int, ToolResult]) -> None:
        pending = []
        for i, prepared in list(to_run.items()):
            if not prepared.tool.requires_approval:
                continue
            key = f"step{step}/tool{i}"
            with transaction(self.conn):
                self.conn.execute("INSERT OR IGNORE INTO agent_approvals (run_id, call_key, tool, arguments, decision) "
                                  "VALUES (?,?,?,?,?)", (self.run_id, key, prepared.tool.name,
                                                         json.dumps(prepared.arguments, default=str), "pending"))
            decision = self.conn.execute("SELECT decision FROM agent_approvals WHERE run_id = ? AND call_key = ?",
                                         (self.run_id, key)).fetchone()["decision"]
            if decision == "pending":
                pending.append(f"{prepared.tool.name} ({key})")
            elif decision == "denied":
                del to_run[i]
                denied = ToolResult(prepared.call_id, prepared.tool.name, "Error: a human denied this call. Do not "
                                    "retry it; continue without it or explain what you need.", False, "denied")
                results[i] = self._journal_result(key, step, {"name": prepared.tool.name}, denied)
        if pending:
            raise StopRun("waiting", waiting_reason(self.run_id, pending))

    def _execute(self, key: str, step: int, prepared: PreparedCall) -> ToolResult:
        idempotency_key = f"{self.run_id}/{key}" if prepared.tool.side_effecting else None
        self.journal.start(key, "tool", {"name": prepared.tool.name, "arguments": prepared.arguments}, idempotency_key)
        context = ToolContext(self.run_id, key, idempotency_key, self.workspace, self.memory, self.scope)
        return self._complete_tool(key, step, self.registry.execute(prepared, context))

    def _journal_result(self, key: str, step: int, request: dict, result: ToolResult) -> ToolResult:
        self.journal.start(key, "tool", request)
        return self._complete_tool(key, step, result)

    def _complete_tool(self, key: str, step: int, result: ToolResult) -> ToolResult:
        """Journal the result, its text cut to `max_tool_output_chars` first: the model sees what the journal holds,
        and a resumed run replays the same."""
        result = dataclasses.replace(result, content=cut_middle(result.content, self.config.max_tool_output_chars))
        self.journal.complete(key, dataclasses.asdict(result))
        self._trace_tool(key, step, self.journal.get(key))
        return result

    def _trace_tool(self, key: str, step: int, entry) -> None:
        result = entry.response
        self.tracer.record(key, f"step{step}", f"tool {result['name']}", "tool", entry.started_at, entry.completed_at,
                           {"tool": result["name"], "ok": result["ok"], "error_kind": result["error_kind"] or "",
                            "idempotency_key": entry.idempotency_key or ""},
                           status="ok" if result["ok"] else "error")

    def _made_progress(self, response: ModelResponse, results: list[ToolResult]) -> bool:
        new = False
        for call, result in zip(response.tool_calls, results):
            signature = f"{call.name}|{call.arguments}|{result.content}"
            if result.ok and signature not in self.seen_results:
                new = True
            self.seen_results.add(signature)
        return new

    # ---- bookkeeping ------------------------------------------------------------------------------
    def _save_progress(self, steps: int) -> None:
        self.spend.wall_s = self.active_before + time.monotonic() - self.session_start
        update_run(self.conn, self.run_id, steps=steps, prompt_tokens=self.spend.prompt_tokens,
                   completion_tokens=self.spend.completion_tokens, cost_usd=self.spend.cost_usd,
                   active_seconds=self.spend.wall_s)
        step_entries = [e for e in self.journal.entries() if e.key.startswith(f"step{steps - 1}/")] if steps else []
        if step_entries:
            self.tracer.record(f"step{steps - 1}", "run", f"step {steps - 1}", "step", step_entries[0].started_at,
                               max(e.completed_at or e.started_at for e in step_entries), {}, replace=True)

    def _finish(self, status: str, reason: str, answer: str | None, redo_step: int | None = None) -> None:
        with transaction(self.conn):  # one write: a step is set aside if and only if the run's end is recorded
            if redo_step is not None:
                for old_key, new_key in self.journal.set_aside_step(redo_step):
                    self.tracer.move(old_key, new_key)
            self._save_progress(self.steps_started)
            update_run(self.conn, self.run_id, status=status, stop_reason=reason, final_answer=answer)
            self.tracer.record("run", None, f"run {self.run_id}", "run", self.record.created_at, time.time(), {
                "status": status, "task": self.record.task[:200], "steps": self.steps_started,
                "prompt_tokens": self.spend.prompt_tokens, "completion_tokens": self.spend.completion_tokens,
                "cost_usd": self.spend.cost_usd}, status="ok" if status in ("completed", "waiting") else status,
                replace=True)
