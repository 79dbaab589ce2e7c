"""The dashboard's JSON API over training runs, agent runs and eval runs (all under /api/).

Every route here is read-only except the approval decision. Lists are paged (`offset`, `limit`)
so a page over thousands of runs or a trace of hundreds of steps loads a screenful at a time.
"""

from __future__ import annotations

import logging
import threading

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from lmstack.agent.executing import EXECUTING
from lmstack.agent.launch import build_runtime, check_model_reachable, decide_approvals, open_database
from lmstack.agent.runtime import AgentRuntime
from lmstack.agent.store import RunNotFoundError, UnknownStatusError
from lmstack.errors import LmstackError
from lmstack.evals.store import RunNotFound
from lmstack.openai_url import ModelListingError
from lmstack.serve.errors import APIError
from lmstack.web import agent_views, eval_views, training_runs
from lmstack.web.sources import DataSources

log = logging.getLogger("lmstack.web")
NOT_FOUND = (RunNotFoundError, RunNotFound, training_runs.TrainingRunNotFound)
PAGE = Query(50, ge=1, le=500, description="items per page")
OFFSET = Query(0, ge=0, description="items to skip (newest first)")


class ApprovalDecision(BaseModel):
    approve: bool = Field(description="true approves the call(s), false rejects them")
    call_key: str | None = Field(None, description="one call (e.g. 'step2/tool0'); none decides every pending call")
    resume: bool = Field(True, description="resume the run in the background after deciding")


def not_found(err: Exception) -> APIError:
    return APIError(str(err), status=404, code="not_found")


def data_router(sources: DataSources) -> APIRouter:
    router = APIRouter(prefix="/api")
    root = sources.settings.runs_root

    # ---- training runs --------------------------------------------------------------------------
    @router.get("/training/runs", tags=["dashboard: training"])
    def training_run_list():
        """Run dirs under the runs root, most recently updated first, with their last step and loss."""
        return {"root": str(root), "runs": training_runs.list_runs(root)}

    # Names may hold slashes (nested runs, "RUN/NESTED"), so the metrics have a prefix of their own: as a suffix of
    # the run's URL, "RUN/metrics" would name both RUN's metrics and a run nested in RUN called "metrics".
    @router.get("/training/metrics/{name:path}", tags=["dashboard: training"])
    def training_metrics(name: str, offset: int = Query(0, ge=0, description="byte offset returned by the last call"),
                         file: str | None = Query(None, description="file identity returned by the last call")):
        """metrics.jsonl records from a byte offset on: poll with the returned offset and file to follow a live
        run (a replaced or truncated file is read again from the start, with `reset` set)."""
        try:
            return training_runs.read_metrics_from(root, name, offset, file)
        except NOT_FOUND as err:
            raise not_found(err) from None

    @router.get("/training/runs/{name:path}", tags=["dashboard: training"])
    def training_run(name: str):
        """One run's config, checkpoints and the samples logged at each eval."""
        try:
            return training_runs.run_detail(root, name)
        except NOT_FOUND as err:
            raise not_found(err) from None

    # ---- agent runs -----------------------------------------------------------------------------
    @router.get("/agents/runs", tags=["dashboard: agents"])
    def agent_run_list(status: str | None = Query(None, description="only runs with this status"),
                       offset: int = OFFSET, limit: int = PAGE):
        """A page of agent runs, newest first, with the total, the count per status, and every status a run can
        have (in the order the dashboard shows them)."""
        try:
            return agent_views.runs_page(sources.agent_conn(), status, offset, limit)
        except UnknownStatusError as err:
            raise APIError(str(err), status=400, param="status") from None

    @router.get("/agents/runs/{run_id}", tags=["dashboard: agents"])
    def agent_run(run_id: str):
        """One run: status, totals, final answer, its tool-call approvals (pending and decided), and whether it can
        still change (`resumable`)."""
        try:
            return agent_views.run_overview(sources.agent_conn(), run_id)
        except NOT_FOUND as err:
            raise not_found(err) from None

    @router.get("/agents/runs/{run_id}/steps", tags=["dashboard: agents"])
    def agent_steps(run_id: str, offset: int = Query(0, ge=0, description="first step"),
                    limit: int = Query(20, ge=1, le=200, description="steps per page")):
        """A page of the run's trace: model calls and tool calls with durations, tokens, cost, and
        the monitor events with the character span of the message they flag."""
        try:
            return agent_views.steps_page(sources.agent_conn(), run_id, offset, limit)
        except NOT_FOUND as err:
            raise not_found(err) from None

    @router.post("/agents/runs/{run_id}/approvals", tags=["dashboard: agents"])
    def agent_approve(run_id: str, decision: ApprovalDecision):
        """Approve or reject a waiting run's tool call(s), then (by default) resume the run in the background. A 409
        when the run cannot resume in this process (its tools or checkpoint do not load here, its API key is not set
        here, its server is down): nothing is decided, and the run waits for `lmstack agent approve` where it can
        resume. `resumed` is false when the dashboard is executing the run already: the decision is recorded, and
        that executor takes it up."""
        # A run this process already executes (resumed by an approval of another of its calls a moment ago) gets no
        # second executor: two would each do the run's steps and tool calls. Nor a 409: the decision is recorded,
        # and the running executor takes it up when it reaches the call, or resumes itself if it paused on the call
        # just before (see AgentRuntime.run). That is what LangGraph's server does with input for a busy thread by
        # default ("enqueue": it runs once the current run is done), and what a user deciding several calls in a
        # row expects: every click counts, none has to be repeated. `resumed` is then false. Such a run's agent is
        # not rebuilt (its tools loaded again, a checkpoint's weights too): the decision is recorded while its
        # executor cannot stop (ExecutingRuns.while_executing).
        conn = sources.agent_conn()
        try:
            if decision.resume:
                executing, keys = EXECUTING.while_executing(run_id, lambda: decide_approvals(
                    conn, run_id, decision.approve, decision.call_key, lambda: None)[0])
                if executing:
                    return {"decided": keys, "approve": decision.approve, "resumed": False}
            keys, runtime = decide_approvals(conn, run_id, decision.approve, decision.call_key,
                                             lambda: _runtime_to_resume(sources, run_id) if decision.resume else None)
        except NOT_FOUND as err:
            raise not_found(err) from None
        # Another approval's executor may have started during the rebuild: then this one is dropped.
        resumed = runtime is not None and runtime.claim_here()
        if resumed:
            threading.Thread(target=_resume, args=(runtime,), name=f"resume-{run_id}", daemon=True).start()
        elif runtime is not None:
            _release(runtime)
        return {"decided": keys, "approve": decision.approve, "resumed": resumed}

    # ---- eval runs ------------------------------------------------------------------------------
    @router.get("/evals/runs", tags=["dashboard: evals"])
    def eval_run_list(offset: int = OFFSET, limit: int = PAGE):
        """A page of eval runs, newest first, each with its score summary (means and 95% CIs; an unfinished run's
        of its samples so far, with `summary.partial`)."""
        return eval_views.runs_page(sources.eval_store, offset, limit)

    @router.get("/evals/runs/{run_id}", tags=["dashboard: evals"])
    def eval_run(run_id: str):
        """One eval run: task, model, config, environment and score summary (partial while it has not finished)."""
        try:
            return eval_views.run_detail(sources.eval_store, run_id)
        except NOT_FOUND as err:
            raise not_found(err) from None

    @router.get("/evals/runs/{run_id}/samples", tags=["dashboard: evals"])
    def eval_samples(run_id: str, offset: int = OFFSET, limit: int = PAGE):
        """A page of the run's per-sample results (scores, status, error)."""
        try:
            return eval_views.samples_page(sources.eval_store, run_id, offset, limit)
        except NOT_FOUND as err:
            raise not_found(err) from None

    # `:path` because sample ids may hold "/" (e.g. "gsm8k/12"): the server decodes %2F before routing.
    # Nothing else lives under .../samples/, so this shadows no route.
    @router.get("/evals/runs/{run_id}/samples/{sample_id:path}", tags=["dashboard: evals"])
    def eval_sample(run_id: str, sample_id: str, epoch: int = Query(0, ge=0)):
        """One sample's full record: input, target, output, scores and its transcript of events."""
        try:
            return eval_views.sample_detail(sources.eval_store, run_id, sample_id, epoch)
        except NOT_FOUND as err:
            raise not_found(err) from None

    @router.get("/evals/compare", tags=["dashboard: evals"])
    def eval_compare(a: str = Query(description="baseline run id"), b: str = Query(description="candidate run id"),
                     alpha: float = Query(0.05, gt=0, lt=1, description="significance level")):
        """Paired comparison of two runs per shared scorer: test, p-value, verdict and the flipped samples."""
        try:
            return eval_views.comparison(sources.eval_store, a, b, alpha)
        except NOT_FOUND as err:
            raise not_found(err) from None

    return router


def _runtime_to_resume(sources: DataSources, run_id: str) -> AgentRuntime:
    """The run's agent, rebuilt in this process before anything is decided (its tools loaded, its model client made,
    its model reached) on a connection of its own, as the resume outlives the request. A 409 naming the cause when
    that fails: the resume would fail in the background after the calls were decided, leaving a run `waiting` on
    nothing, with a response that said it resumed."""
    conn = open_database(sources.settings.db_path)
    runtime = None
    try:
        runtime = build_runtime(conn, run_id)
        check_model_reachable(runtime.config)  # the config the rebuild already read
    except BaseException as err:
        if runtime is not None:
            _release(runtime)
        else:
            conn.close()
        if isinstance(err, LmstackError) and not isinstance(err, NOT_FOUND):
            raise _cannot_resume(run_id, err) from None
        raise
    return runtime


def _cannot_resume(run_id: str, err: LmstackError) -> APIError:
    unreachable = isinstance(err, ModelListingError)  # the run loads, but its model cannot be reached from here
    where = ("where the model can be reached, or start the dashboard with the run's key in its environment"
             if unreachable else "where the run's tools and model load")
    return APIError(f"the dashboard cannot resume this run, so nothing was decided: {err}. Decide with "
                    f"`lmstack agent approve {run_id}` {where}", status=409,
                    code="model_unreachable" if unreachable else "cannot_resume")


def _resume(runtime: AgentRuntime) -> None:
    """Runs in its own thread, on the runtime's own connection: a resumed run can take minutes."""
    try:
        record = runtime.run()
        log.info("agent run %s resumed from the dashboard: %s", runtime.run_id, record.status)
    except Exception:  # a thread has no caller to raise to; the run's own status records model failures
        log.exception("resuming agent run %s failed", runtime.run_id)
    finally:
        _release(runtime)


def _release(runtime: AgentRuntime) -> None:
    """Close what a runtime rebuilt in this long-lived process holds: its connection, and its model client's sockets
    (an in-process checkpoint's client has none to close)."""
    runtime.conn.close()
    close = getattr(runtime.client, "close", None)
    if close is not None:
        close()
