"""The evaluated model as the solvers see it: the agent layer's `ModelClient`, plus a response cache,
a concurrency limit per endpoint, per-sample event logs and token / dollar accounting.

The cache key is a hash of the exact request (endpoint, model, messages, tools, sampling settings,
seed), so re-running or resuming an eval makes no repeated model call for a request already
answered. `SampleModel` implements the `ModelClient` protocol itself, so the agent runtime can run
on it unchanged and every call it makes is cached and logged too.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lmstack.agent.budget import BudgetConfig, call_cost
from lmstack.agent.client import ModelClient, ModelResponse
from lmstack.evals.completions import PromptToken, prompt_logprobs
from lmstack.evals.sample import TaskState, Usage
from lmstack.evals.store import Store
from lmstack.openai_url import is_http_url


def endpoint_id(client: Any) -> str:
    """Where a client's answers come from: the base URL for HTTP clients; for an in-process checkpoint,
    its path plus the weights file's size and mtime, so retraining into the same dir misses the cache."""
    sdk = getattr(client, "sdk", None)
    if sdk is not None:
        return str(sdk.base_url).rstrip("/")
    checkpoint = getattr(client, "checkpoint", "")
    weights = Path(checkpoint) / "model.safetensors"
    version = f"@{weights.stat().st_size}:{weights.stat().st_mtime_ns}" if checkpoint and weights.is_file() else ""
    return f"{type(client).__name__}:{checkpoint}{version}"


_WEIGHTS_VERSION = re.compile(r"@\d+:\d+$")  # endpoint_id's "@SIZE:MTIME_NS" after a checkpoint's path


def shown_endpoint(endpoint: str) -> str:
    """An endpoint id as a user knows it: a URL, or a checkpoint's path (with its weights file as it was: retraining
    into the dir makes it another model). Read back here, beside endpoint_id, because a run records only the id."""
    if is_http_url(endpoint):
        return endpoint
    path = _WEIGHTS_VERSION.sub("", endpoint.split(":", 1)[-1])
    return f"checkpoint '{path}' (its weights as they were then)"


def request_key(endpoint: str, request: dict[str, Any]) -> str:
    canonical = json.dumps({"endpoint": endpoint, **request}, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


_SLOTS: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def endpoint_slots(endpoint: str, max_concurrency: int) -> threading.BoundedSemaphore:
    """One semaphore per (endpoint, limit) in this process: a model and a judge served by the same
    endpoint share its limit instead of each taking the whole of it."""
    with _SLOTS_LOCK:
        return _SLOTS.setdefault((endpoint, max_concurrency), threading.BoundedSemaphore(max_concurrency))


class CachedModel:
    """One endpoint: the client, its concurrency limit, the shared cache and its prices."""

    def __init__(self, client: ModelClient, store: Store, max_concurrency: int = 8,
                 price_per_mtok: tuple[float, float] | None = None, use_cache: bool = True):
        self.client = client
        self.store = store
        self.endpoint = endpoint_id(client)
        self.slots = endpoint_slots(self.endpoint, max_concurrency)
        # The agent layer's price table, unless the caller gives (input, output) dollars per million tokens.
        price_in, price_out = price_per_mtok or (None, None)
        self.pricing = BudgetConfig(price_in_per_mtok=price_in, price_out_per_mtok=price_out)
        self.use_cache = use_cache
        # Seconds an HTTP request may take (an in-process client has none): recorded with the run, and named when a
        # request takes longer.
        self.timeout_s: float | None = getattr(client, "timeout_s", None)
        self.takes_seed = "seed" in inspect.signature(client.complete).parameters
        # This process's requests by outcome, for `eval run`'s closing line: 'answered' by the endpoint, 'cached'
        # (answered from the cache) or 'failed' (an error instead of an answer, after the client's retries).
        self.requests: Counter[str] = Counter()
        self._count_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.client.model

    def for_sample(self, state: TaskState, role: str = "model") -> "SampleModel":
        return SampleModel(self, state, role)

    def call(self, request: dict[str, Any], send) -> tuple[dict[str, Any], bool]:
        """The response to `request` from the cache, or from `send()` (then cached). Returns (response, cached)."""
        key = request_key(self.endpoint, request)
        if self.use_cache:
            hit = self.store.cached_response(key)
            if hit is not None:
                self._count("cached")
                return hit, True
        with self.slots:
            try:
                response = send()
            except Exception:
                self._count("failed")
                raise
        self._count("answered")
        if self.use_cache:
            self.store.cache_response(key, self.endpoint, request, response)
        return response, False

    def _count(self, outcome: str) -> None:
        with self._count_lock:
            self.requests[outcome] += 1


class SampleModel:
    """A `ModelClient` bound to one sample: calls go through the cache and are logged on the sample."""

    def __init__(self, cached: CachedModel, state: TaskState, role: str):
        self.cached = cached
        self.state = state
        self.role = role
        self.model = cached.name

    # The agent runtime fits its conversation with these when the client knows them (the in-process engine knows
    # both; an HTTP endpoint knows the context when it reports max_model_len, and never counts tokens for us:
    # AttributeError, and the runtime falls back to its settings and estimates).
    @property
    def context_tokens(self) -> int:
        return self.cached.client.context_tokens

    @property
    def count_tokens(self):
        return self.cached.client.count_tokens

    def complete(self, messages: list[dict], tools: list[dict] | None = None, *, temperature: float = 0.0,
                 max_tokens: int | None = None, logprobs: bool = False) -> ModelResponse:
        request = {"kind": "chat", "model": self.model, "messages": messages, "tools": tools,
                   "temperature": temperature, "max_tokens": max_tokens, "logprobs": logprobs,
                   "seed": self.state.seed}
        params: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens, "logprobs": logprobs}
        if self.cached.takes_seed:
            params["seed"] = self.state.seed
        started = time.perf_counter()
        data, cached = self.cached.call(request, lambda: self.cached.client.complete(messages, tools, **params).to_dict())
        response = ModelResponse.from_dict(data)
        self._account(response.usage.prompt_tokens, response.usage.completion_tokens, cached)
        self.state.log("model_call", role=self.role, model=self.model, cached=cached,
                       latency_s=round(time.perf_counter() - started, 4), messages=list(messages),
                       tools=[t.get("function", t).get("name") for t in tools or []],
                       response=response.assistant_message(), usage=data["usage"])
        return response

    def prompt_logprobs(self, prompt: str) -> list[PromptToken]:
        """Per-token logprobs of `prompt` under the model (completions with echo, or the engine)."""
        request = {"kind": "prompt_logprobs", "model": self.model, "prompt": prompt}
        started = time.perf_counter()
        data, cached = self.cached.call(
            request, lambda: [t.to_dict() for t in prompt_logprobs(self.cached.client, prompt)])
        tokens = [PromptToken(**t) for t in data]
        self._account(len(tokens), 0, cached)
        self.state.log("logprobs_call", role=self.role, model=self.model, cached=cached,
                       latency_s=round(time.perf_counter() - started, 4), prompt=prompt, tokens=len(tokens))
        return tokens

    def _account(self, prompt_tokens: int, completion_tokens: int, cached: bool) -> None:
        usage = Usage(prompt_tokens, completion_tokens, 0.0, 0 if cached else 1, 1 if cached else 0)
        # A cached answer cost nothing now, but the run's cost is what its answers cost to produce.
        usage.cost_usd = call_cost(self.model, self.cached.pricing, prompt_tokens, completion_tokens)
        self.state.usage.add(usage)
