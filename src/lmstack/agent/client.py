"""Model clients behind one interface: `complete(messages, tools, ...) -> ModelResponse`.

`OpenAIClient` talks to any OpenAI-compatible endpoint (our server, vLLM, llama.cpp, Ollama, OpenAI)
through the `openai` SDK; `lmstack.agent.engine_client.EngineClient` runs our engine in-process.
Both return text, tool calls, usage and, where the backend gives them, per-token logprobs.
Messages and tool schemas are plain OpenAI-format dicts, so the journal can store them as JSON.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

from lmstack.errors import LmstackError
from lmstack.openai_url import api_base, listing_failure

T = TypeVar("T")


class ModelCallError(LmstackError):
    """The model endpoint failed for good (after retries) or rejected the request. `resume_when`: what must hold
    before the same call can succeed (a resumed run makes it again)."""

    def __init__(self, message: str, resume_when: str = "once the endpoint is back"):
        super().__init__(message)
        self.resume_when = resume_when


class ContextLengthError(ModelCallError):
    """The endpoint refused the prompt as too long for its context (with the reply's max_tokens). Not final: the
    caller fits the conversation again, with the prompt's length as the server counted it (`prompt_tokens`) and its
    context (`context_tokens`) where the message says them (our server, vLLM, OpenAI), and sends it again."""

    def __init__(self, message: str, prompt_tokens: int | None, context_tokens: int | None):
        super().__init__(message, "with the prompt fitted again (failing the same way, a new run with "
                                  "--set context_tokens=N under the model's context fits it)")
        self.prompt_tokens, self.context_tokens = prompt_tokens, context_tokens


# How servers word a prompt too long for the context, and where they say the numbers (the code is OpenAI's and
# ours; llama.cpp says only "exceeds the available context size").
CONTEXT_ERROR = re.compile(r"context[_ ]length|context window|context size|maximum context|does not fit the context",
                           re.IGNORECASE)
PROMPT_COUNT = re.compile(r"(?:the prompt of|your request has|your messages resulted in|\() *(\d+) "
                          r"(?:input |prompt )?(?:tokens|in the messages)", re.IGNORECASE)
CONTEXT_COUNT = re.compile(r"(?:the context of|maximum context length is) *(\d+) tokens", re.IGNORECASE)


class IncompleteStreamError(Exception):
    """A streamed reply ended (the connection closed cleanly) before its finish_reason: retried like a cut
    connection, since what arrived is only the start of the reply."""


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # raw JSON text exactly as the model wrote it; parsed and validated by the tool layer


@dataclass(slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top_logprobs: list[tuple[str, float]] = field(default_factory=list)

    @property
    def entropy(self) -> float:
        """Entropy (nats) of the top-k distribution, renormalised; 0 when only the chosen token is known."""
        probs = [math.exp(lp) for _, lp in self.top_logprobs]
        total = sum(probs)
        return -sum(p / total * math.log(p / total) for p in probs if p > 0) if total > 0 else 0.0


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class ModelResponse:
    text: str
    tool_calls: list[ToolCall]
    usage: Usage
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str = "stop"
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelResponse":
        logprobs = data.get("logprobs")
        return cls(
            text=data["text"], tool_calls=[ToolCall(**c) for c in data["tool_calls"]], usage=Usage(**data["usage"]),
            logprobs=[TokenLogprob(e["token"], e["logprob"], [tuple(t) for t in e["top_logprobs"]]) for e in logprobs]
            if logprobs is not None else None,
            finish_reason=data.get("finish_reason", "stop"), model=data.get("model", ""))

    def assistant_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                     for c in self.tool_calls]
        return message


class ModelClient(Protocol):
    model: str

    def complete(self, messages: list[dict], tools: list[dict] | None = None, *, temperature: float = 0.0,
                 max_tokens: int | None = None, logprobs: bool = False, seed: int | None = None) -> ModelResponse: ...


@dataclass
class RetryPolicy:
    max_attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0

    max_retry_after_s: float = 60.0  # the longest Retry-After honoured; a longer one fails the call now

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, base * 2^attempt], so many clients retrying don't move in lockstep."""
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** attempt))


class RetryAfterTooLong(Exception):
    def __init__(self, seconds: float, policy: RetryPolicy):
        super().__init__(f"the endpoint asked to retry after {seconds:g} s, longer than the "
                         f"{policy.max_retry_after_s:g} s waited at most; try again later")


def with_retries(call: Callable[[], T], is_retryable: Callable[[BaseException], bool], policy: RetryPolicy,
                 sleep: Callable[[float], None] = time.sleep,
                 retry_after: Callable[[BaseException], float | None] = lambda err: None) -> T:
    """`call()`, retried with backoff on the errors `is_retryable` accepts. When the endpoint says how long to wait
    (`retry_after`: a 429's or 503's Retry-After), the wait is at least that, as OpenAI's and vLLM's clients do."""
    for attempt in range(policy.max_attempts):
        try:
            return call()
        except Exception as err:
            if not is_retryable(err) or attempt == policy.max_attempts - 1:
                raise
            asked = retry_after(err)
            if asked is not None and asked > policy.max_retry_after_s:
                raise RetryAfterTooLong(asked, policy) from err
            sleep(max(policy.delay(attempt), asked or 0.0))
    raise AssertionError("unreachable")


class OpenAIClient:
    """Any OpenAI-compatible chat endpoint. Retries timeouts, 429 and 5xx with backoff and jitter."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 60.0,
                 retry: RetryPolicy | None = None, stream: bool = False,
                 timeout_fix: str = "raise the client's timeout_s", api_key_env: str | None = None):
        import openai

        self.model = model
        self.api_key_env = api_key_env  # where the key came from, named when the server refuses it
        self.stream = stream
        self.timeout_s = timeout_s  # seconds one request may take (an eval run records it)
        # How the user of the command that built this client gives a slow model more time (each command has its
        # own flag), for the error of a request that timed out.
        self.timeout_fix = timeout_fix
        self.retry = retry or RetryPolicy()
        # The SDK's own retries are off: ours add jitter and apply the same policy to every backend.
        self.sdk = openai.OpenAI(base_url=api_base(base_url), api_key=api_key or "not-needed", timeout=timeout_s, max_retries=0)
        self._max_model_lens: dict[str, Any] | None = None  # GET /v1/models, once it has answered

    def close(self) -> None:
        """Close the SDK's connection pool now. A process that makes clients as it goes (the dashboard, one per resumed
        run) would otherwise keep each one's sockets open until the garbage collector finds it."""
        self.sdk.close()

    def __enter__(self) -> "OpenAIClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def context_tokens(self) -> int:
        """The model's context as the server reports it in GET /v1/models (`max_model_len`: our server, vLLM).

        The runtime fits each conversation to it. OpenAI's API does not report one: then AttributeError, the
        "this client does not know" of `getattr(client, "context_tokens", setting)`, and the run's setting holds.
        """
        if self._max_model_lens is None:
            self._max_model_lens = self._list_max_model_lens()
        length = (self._max_model_lens or {}).get(self.model)
        if not isinstance(length, int) or length < 1:
            raise AttributeError(f"the endpoint does not report the context length of model '{self.model}'")
        return length

    def _list_max_model_lens(self) -> dict[str, Any] | None:
        import openai

        try:
            return {m.id: getattr(m, "max_model_len", None) for m in self.sdk.models.list().data}
        except openai.APIConnectionError:
            return None  # not remembered: a server still starting up is asked again before the next call
        except openai.APIError:
            return {}  # remembered: an endpoint without the listing (a gateway's 404) is not asked at every step

    def complete(self, messages: list[dict], tools: list[dict] | None = None, *, temperature: float = 0.0,
                 max_tokens: int | None = None, logprobs: bool = False, seed: int | None = None) -> ModelResponse:
        import openai

        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature}
        if seed is not None:  # evals give each sample its own seed
            kwargs["seed"] = seed
        if tools:
            kwargs["tools"] = tools
        if max_tokens is not None:
            kwargs["max_tokens"] = max_tokens
        if logprobs:
            kwargs.update(logprobs=True, top_logprobs=5)
        call = self._streamed if self.stream else self._whole
        endpoint = f"model '{self.model}' at {self.sdk.base_url}"  # how every error below starts
        try:
            return with_retries(lambda: call(kwargs), _is_retryable, self.retry, retry_after=_retry_after_s)
        except openai.BadRequestError as err:
            failed = f"{endpoint} failed: {err}"
            if err.code == "context_length_exceeded" or CONTEXT_ERROR.search(str(err.message)):
                prompt, context = PROMPT_COUNT.search(err.message), CONTEXT_COUNT.search(err.message)
                raise ContextLengthError(failed, prompt and int(prompt[1]), context and int(context[1])) from None
            raise ModelCallError(failed) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
            if self.api_key_env is None:
                raise ModelCallError(f"{endpoint} failed: {err}") from None
            # The words of the start-up check (GET /v1/models), for a key that changed since: a resumed run.
            raise ModelCallError(f"{endpoint}: {listing_failure(err, self.api_key_env)[1]}",
                                 f"once ${self.api_key_env} holds the server's key") from None
        except (openai.APIError, IncompleteStreamError) as err:
            slow = (f" (no answer within the {self.timeout_s:g} s timeout; {self.timeout_fix})"
                    if isinstance(err, openai.APITimeoutError) else "")
            raise ModelCallError(f"{endpoint} failed: {err}{slow}") from None
        except RetryAfterTooLong as err:
            raise ModelCallError(f"{endpoint} failed: {err.__cause__}; {err}") from None

    def _whole(self, kwargs: dict[str, Any]) -> ModelResponse:
        completion = self.sdk.chat.completions.create(**kwargs)
        choice = completion.choices[0]
        calls = [ToolCall(c.id, c.function.name, c.function.arguments or "") for c in choice.message.tool_calls or []]
        usage = Usage(completion.usage.prompt_tokens, completion.usage.completion_tokens) if completion.usage else Usage()
        content = choice.logprobs.content if choice.logprobs and choice.logprobs.content is not None else None
        return ModelResponse(choice.message.content or "", calls, usage, _convert_logprobs(content),
                             choice.finish_reason or "stop", completion.model)

    def _streamed(self, kwargs: dict[str, Any]) -> ModelResponse:
        stream = self.sdk.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
        text, calls, entries, usage, finish, model = [], {}, [], Usage(), None, self.model
        got_logprobs = False
        for chunk in stream:
            model = chunk.model or model
            if chunk.usage:
                usage = Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                for delta in choice.delta.tool_calls or []:
                    call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = delta.id or call["id"]
                    if delta.function:
                        call["name"] += delta.function.name or ""
                        call["arguments"] += delta.function.arguments or ""
                if choice.logprobs and choice.logprobs.content is not None:
                    got_logprobs = True
                    entries.extend(choice.logprobs.content)
                finish = choice.finish_reason or finish
        if finish is None:  # else a reply cut mid-sentence would pass as the final answer
            raise IncompleteStreamError(f"the stream ended after {len(''.join(text))} characters without a "
                                        "finish_reason: the reply is incomplete")
        tool_calls = [ToolCall(**calls[i]) for i in sorted(calls)]
        return ModelResponse("".join(text), tool_calls, usage, _convert_logprobs(entries) if got_logprobs else None,
                             finish, model)


def _convert_logprobs(entries: list | None) -> list[TokenLogprob] | None:
    if entries is None:
        return None
    return [TokenLogprob(e.token, e.logprob, [(t.token, t.logprob) for t in e.top_logprobs or []]) for e in entries]


def _retry_after_s(err: BaseException) -> float | None:
    """The Retry-After of a 429 or 5xx, in seconds (a number; the HTTP-date form is rare from model servers)."""
    import openai

    if not isinstance(err, openai.APIStatusError):
        return None
    value = err.response.headers.get("retry-after-ms")
    scale = 1000.0
    if value is None:
        value, scale = err.response.headers.get("retry-after"), 1.0
    try:
        seconds = float(value) / scale
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 and math.isfinite(seconds) else None


def _is_retryable(err: BaseException) -> bool:
    import openai

    if isinstance(err, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                        IncompleteStreamError)):
        return True
    return isinstance(err, openai.APIStatusError) and err.status_code >= 500
