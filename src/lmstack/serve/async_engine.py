"""The engine behind the server: one thread runs `Engine.step`, requests wait on asyncio queues.

The engine is synchronous and single-threaded by design; the event loop must never block on a
forward pass. So a daemon thread steps the engine whenever it has work and hands each step's
events to the loop with `call_soon_threadsafe`. A request that stops being read (the client went
away, the handler was cancelled) is aborted, which frees its KV blocks at the engine's next step.

A step that raises fails its own requests and the thread goes on (the engine cleaned up after it). An error that
escapes the thread's loop anywhere else stops the engine for good: see `_run`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterable

from lmstack.infer.engine import Engine, TokenEvent
from lmstack.infer.params import SamplingParams
from lmstack.serve.errors import APIError
from lmstack.serve.metrics import ServerMetrics

log = logging.getLogger("lmstack.serve")


@dataclass(eq=False)
class RequestHandle:
    request_id: str
    n: int
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted_at: float = field(default_factory=time.perf_counter)
    started: bool = False  # a first event arrived: the request left the queue
    finished: int = 0  # of its n sequences
    last_token_at: dict[int, float] = field(default_factory=dict)


class AsyncEngine:
    def __init__(self, engine: Engine, metrics: ServerMetrics, max_queue: int):
        self.engine = engine
        self.metrics = metrics
        self.max_queue = max_queue
        self._handles: dict[str, RequestHandle] = {}
        self._wake = threading.Event()
        self._stopping = False
        self.failure: str | None = None  # why the engine thread stopped, once an error escaped its loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="lmstack-engine", daemon=True)

    # ---- lifecycle -------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread.start()

    def stop(self) -> None:
        """Stop stepping (after the server drained its requests) and abort whatever is left."""
        for request_id in list(self._handles):
            self.engine.abort(request_id)
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout=10)

    @property
    def queue_depth(self) -> int:
        """Requests accepted but not yet producing tokens."""
        return sum(1 for h in list(self._handles.values()) if not h.started)

    # ---- requests --------------------------------------------------------------------------------
    def submit(self, prompt: list[int], params: SamplingParams) -> RequestHandle:
        """Queue a request; SamplingError (-> 400) if it can never fit, APIError 429 if the queue is full."""
        if self.queue_depth >= self.max_queue:
            raise APIError(f"the server's queue is full ({self.max_queue} requests waiting); retry shortly",
                           status=429, code="queue_full", headers={"Retry-After": "1"})
        # The handle is registered before the engine may see the request: the engine thread can step it, and a
        # short one finish, before add_request even returns here, and events without a handle are dropped as those
        # of a request its reader left (the reader then waited forever).
        handle = RequestHandle(f"req-{uuid.uuid4().hex}", params.n)
        self._handles[handle.request_id] = handle
        try:
            # After the handle is registered: a thread that stops sets `failure` before it fails the handles there,
            # so a request is either refused here or failed by it, never left waiting.
            self.check_running()
            self.engine.add_request(prompt, params, handle.request_id)
        except BaseException:
            del self._handles[handle.request_id]
            raise
        self._wake.set()
        return handle

    def check_running(self) -> None:
        """APIError 503 naming the cause once the engine thread has stopped."""
        if self.failure is not None:
            raise APIError(f"the engine stopped after an unexpected error ({self.failure}) and serves no more "
                           "requests; see the server log and restart the server", status=503, code="engine_failed")

    async def events(self, handle: RequestHandle) -> AsyncIterator[TokenEvent]:
        """The request's events until all n sequences finish; aborts the request if the reader stops early."""
        # Count finishes as they are *read*: `handle.finished` is advanced by the engine thread before the
        # batch reaches the queue, so testing it here could stop before the last batch was delivered.
        delivered = 0
        try:
            while delivered < handle.n:
                batch = await handle.queue.get()
                if isinstance(batch, BaseException):
                    raise batch
                for event in batch:
                    if event.finish_reason == "abort":  # not by this reader (that would have ended the loop)
                        raise APIError("the server stopped this request before it finished (shutting down); "
                                       "retry it", status=503, code="aborted")
                    delivered += bool(event.finished)
                    yield event
        finally:
            if delivered < handle.n:
                self.abort(handle)

    def abort(self, handle: RequestHandle) -> None:
        if self._handles.pop(handle.request_id, None) is not None:
            self.engine.abort(handle.request_id)
            self.metrics.aborted.inc()
            self._wake.set()

    # ---- the engine thread -----------------------------------------------------------------------
    def _run(self) -> None:
        """Step until stopped. An error that escapes the loop (outside a step: handing events over, the engine's
        bookkeeping between steps) comes from a bug whose damage nobody knows: events may be lost, so a request
        may wait for a token that never comes. So, as vLLM does when its engine dies (EngineDeadError), every
        waiting request gets a 500 naming the error, and the server stays down: /health turns 503 so that an
        orchestrator restarts it, and new requests get a 503 naming the cause rather than a hang. (vLLM's server
        also exits; ours stays up, as after a failed load, so that /health and the log can say why.)"""
        try:
            self._step_until_stopped()
        except BaseException as err:
            log.exception("the engine thread stopped")
            self.failure = f"{type(err).__name__}: {err}"  # first: a request submitted from now on is refused
            self._fail(list(self._handles), APIError(f"the engine stopped after an unexpected error "
                                                     f"({self.failure}); see the server log", status=500))

    def _step_until_stopped(self) -> None:
        while not self._stopping:
            self._wake.clear()
            if not self.engine.has_unfinished():
                self._wake.wait(timeout=1.0)
                continue
            try:
                events = self.engine.step()
            except Exception as err:  # an engine bug: fail the step's requests, keep serving the others and new ones
                log.exception("engine step failed")
                self._fail_stepped(err, self.engine.failed_requests)
                continue
            self._dispatch(events)

    def _dispatch(self, events: list[TokenEvent]) -> None:
        now = time.perf_counter()
        batches: dict[str, tuple[RequestHandle, list[TokenEvent]]] = {}
        for event in events:
            handle = self._handles.get(event.request_id)
            if handle is None:  # aborted by its reader
                continue
            self._observe(handle, event, now)
            batches.setdefault(event.request_id, (handle, []))[1].append(event)
            if event.finished:
                handle.finished += 1
                if handle.finished == handle.n:
                    self._handles.pop(event.request_id, None)
        for handle, batch in batches.values():
            self._loop.call_soon_threadsafe(handle.queue.put_nowait, batch)

    def _observe(self, handle: RequestHandle, event: TokenEvent, now: float) -> None:
        if event.token_id is not None:
            if not handle.started:
                self.metrics.time_to_first_token.observe(now - handle.submitted_at)
            elif event.index in handle.last_token_at:
                self.metrics.inter_token_latency.observe(now - handle.last_token_at[event.index])
            handle.last_token_at[event.index] = now
        handle.started = True
        if event.finished and event.usage:
            self.metrics.completion_tokens.inc(event.usage["completion_tokens"])
            if event.index == 0:
                self.metrics.prompt_tokens.inc(event.usage["prompt_tokens"])

    def _fail_stepped(self, err: Exception, request_ids: set[str]) -> None:
        """The engine aborted the requests of the step that raised (their blocks freed), and only those: they get the
        500; the requests waiting or added since are still the engine's, and go on."""
        self._fail(request_ids, APIError(f"the engine failed while generating ({type(err).__name__}: {err}); see the "
                                         "server log", status=500))

    def _fail(self, request_ids: Iterable[str], failure: APIError) -> None:
        """Answer these requests' readers with `failure`."""
        for request_id in request_ids:
            handle = self._handles.pop(request_id, None)  # None: its reader left (and took it out) meanwhile
            if handle is not None:
                self._loop.call_soon_threadsafe(handle.queue.put_nowait, failure)
