"""The dashboard's JSON API over training runs, agent runs and eval runs (all under /api/).

Every route here is read-only except the approval decision. Lists are paged (`offset`, `limit`)
so a page over thousands of runs or a trace of hundreds of steps loads a screenful at a time.
"""

from __future__ import annotations

import logging
import threading

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from lmstack.agent.launch import (check_model_reachable, open_database, pending_approvals, record_decisions,
                                  resume_run)
from lmstack.agent.store import RunNotFoundError
from lmstack.errors import LmstackError
from lmstack.evals.store import RunNotFound
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
        """A page of agent runs, newest first, with the total and the count per status."""
        return agent_views.runs_page(sources.agent_conn(), status, offset, limit)

    @router.get("/agents/runs/{run_id}", tags=["dashboard: agents"])
    def agent_run(run_id: str):
        """One run: status, totals, final answer, and its tool-call approvals (pending and decided)."""
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
        when this process cannot reach the run's model (its API key is not set here, the server is down): nothing
        is decided, and the run waits for `lmstack agent approve` where the model can be reached."""
        try:
            keys = pending_approvals(sources.agent_conn(), run_id, decision.call_key)  # that error first: cheaper
            if decision.resume:
                _check_resumable_here(sources, run_id)
            record_decisions(sources.agent_conn(), run_id, decision.approve, keys)
        except NOT_FOUND as err:
            raise not_found(err) from None
        if decision.resume:
            threading.Thread(target=_resume, args=(sources, run_id), name=f"resume-{run_id}", daemon=True).start()
        return {"decided": keys, "approve": decision.approve, "resumed": decision.resume}

    # ---- eval runs ------------------------------------------------------------------------------
    @router.get("/evals/runs", tags=["dashboard: evals"])
    def eval_run_list(offset: int = OFFSET, limit: int = PAGE):
        """A page of eval runs, newest first, each with its score summary (means and 95% CIs)."""
        return eval_views.runs_page(sources.eval_store, offset, limit)

    @router.get("/evals/runs/{run_id}", tags=["dashboard: evals"])
    def eval_run(run_id: str):
        """One eval run: task, model, config, environment and score summary."""
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


def _check_resumable_here(sources: DataSources, run_id: str) -> None:
    """A 409 when this process cannot reach the run's model (see `check_model_reachable`)."""
    try:
        check_model_reachable(sources.agent_conn(), run_id)
    except NOT_FOUND:
        raise
    except LmstackError as err:
        raise APIError(f"the dashboard cannot resume this run, so nothing was decided: {err}. Decide with "
                       f"`lmstack agent approve {run_id}` where the model can be reached, or start the dashboard "
                       "with the run's key in its environment", status=409, code="model_unreachable") from None


def _resume(sources: DataSources, run_id: str) -> None:
    """Runs in its own thread with its own connection: a resumed run can take minutes."""
    conn = open_database(sources.settings.db_path)
    try:
        record = resume_run(conn, run_id)
        log.info("agent run %s resumed from the dashboard: %s", run_id, record.status)
    except Exception:  # a thread has no caller to raise to; the run's own status records model failures
        log.exception("resuming agent run %s failed", run_id)
    finally:
        conn.close()
