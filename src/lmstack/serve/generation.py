"""What both endpoints share: request fields -> SamplingParams, running a request, logprob records, SSE.

A request is submitted before any response byte is sent, so everything the engine refuses (context
overflow, a bad token id) is still a plain 400; after that a failure can only reach a streaming
client as an `error` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from lmstack.infer.engine import TokenEvent
from lmstack.infer.params import LOGIT_BIAS_RANGE, SamplingParams
from lmstack.serve.async_engine import AsyncEngine, RequestHandle
from lmstack.serve.errors import APIError, api_error_from, error_body
from lmstack.serve.schemas import SamplingFields

log = logging.getLogger("lmstack.serve")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def resolve_max_tokens(requested: int | None, prompt_len: int, context: int, param: str, prompt_param: str) -> int:
    """Without a limit a reply may use the rest of the context, as OpenAI's models do; beyond it is a 400.
    `context` is what the server serves (max_model_len in GET /v1/models); `param` and `prompt_param` are the
    request's fields the errors name."""
    if requested is not None and requested < 1:
        raise APIError(f"{param} must be at least 1, got {requested}", param=param)
    room = context - prompt_len
    if room < 1:
        raise APIError(f"the prompt of {prompt_len} tokens does not fit the context of {context} tokens "
                       f"(max_model_len in GET /v1/models) with room for a token; shorten the prompt ({prompt_param})",
                       param=prompt_param, code="context_length_exceeded")
    if requested is None:
        return room
    if requested > room:
        raise APIError(f"the prompt of {prompt_len} tokens + {param}={requested} does not fit the context of {context} "
                       f"tokens (max_model_len in GET /v1/models); lower {param} to at most {room} or shorten "
                       f"the prompt ({prompt_param})", param=param, code="context_length_exceeded")
    return requested


LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# Objects and arrays nested in any field. Real requests need a handful; the schema checker and the chat template
# recurse once per level or more, and a 4 MiB body nests far deeper than Python's stack goes.
MAX_NESTING = 64


def check_values(body: SamplingFields) -> None:
    """What field types cannot say about a request's values, refused with the field's path instead of failing deep
    inside: JSON may escape half of a UTF-16 pair ("\\ud83d" alone), which is no character that a tokenizer or
    grammar compiler takes; nesting deeper than MAX_NESTING; and stream_options without stream."""
    if body.stream_options is not None and not body.stream:  # as OpenAI and vLLM: else silently ignored
        raise APIError("stream_options is only allowed with stream: true; set stream, or leave stream_options out",
                       param="stream_options")
    queue = deque((name, value, 1) for name, value in body.model_dump(by_alias=True, exclude_unset=True).items())
    while queue:
        path, value, depth = queue.popleft()
        if isinstance(value, str):
            if LONE_SURROGATE.search(value):
                raise APIError(f"{path} holds a lone UTF-16 surrogate (an escape like \\ud83d without its pair), "
                               "which is not text; send valid Unicode", param=path, code="invalid_unicode")
        elif isinstance(value, (dict, list)):
            if depth > MAX_NESTING:
                where = ".".join(path.split(".")[:6])
                raise APIError(f"{where}... nests objects and arrays more than {MAX_NESTING} levels deep; flatten it",
                               param=path.split(".")[0])
            for key, item in (value.items() if isinstance(value, dict) else enumerate(value)):
                if isinstance(key, str) and LONE_SURROGATE.search(key):
                    raise APIError(f"{path} has a key with a lone UTF-16 surrogate (an escape like \\ud83d without "
                                   "its pair), which is not text; send valid Unicode", param=path,
                                   code="invalid_unicode")
                if isinstance(item, (str, dict, list)):  # not numbers: a prompt of token ids may be long
                    queue.append((f"{path}.{key}", item, depth + 1))


def sampling_params(body: SamplingFields, max_tokens: int, *, logprobs: int | None = None,
                    prompt_logprobs: int | None = None, constraint=None,
                    banned_ids: list[int] = ()) -> SamplingParams:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 16 or not all(stop):
        raise APIError("stop must be up to 16 non-empty strings", param="stop")
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        try:
            bias[int(key)] = max(LOGIT_BIAS_RANGE[0], min(LOGIT_BIAS_RANGE[1], float(value)))  # as vLLM
        except ValueError:
            raise APIError(f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
    bias.update({token: float("-inf") for token in banned_ids})
    return SamplingParams(
        max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, min_p=body.min_p,
        repetition_penalty=body.repetition_penalty, frequency_penalty=body.frequency_penalty,
        presence_penalty=body.presence_penalty, logit_bias=bias, seed=body.seed, n=body.n, stop=stop,
        ignore_eos=body.ignore_eos, stop_token_ids=list(body.stop_token_ids), min_tokens=body.min_tokens,
        include_stop_str_in_output=body.include_stop_str_in_output, logprobs=logprobs,
        prompt_logprobs=prompt_logprobs, constraint=constraint)


def reported_logprob(event: TokenEvent) -> tuple[int, float, list] | None:
    """The event's (token, logprob, top alternatives) as the API lists it, or None. The stop token that
    ended a sequence is not part of the returned text, so it gets no entry, as in OpenAI and vLLM; usage
    still counts it (it was sampled), as the engine and vLLM do."""
    if event.token_id is None or event.logprob is None or event.stop_token:
        return None
    return event.token_id, event.logprob, event.top_logprobs or []


@dataclass
class SequenceResult:
    """One of a request's n samples, gathered from its events."""
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)
    logprob_offsets: list[int] = field(default_factory=list)  # where each listed token's text starts in `text`
    finish_reason: str | None = None
    completion_tokens: int = 0


@dataclass
class RequestResult:
    sequences: dict[int, SequenceResult]
    prompt_tokens: int = 0
    prompt_logprobs: list | None = None


def record(result: RequestResult, event: TokenEvent) -> tuple[int, float, list] | None:
    """Add the event to its sequence; returns the event's logprob entry as the API lists it (`reported_logprob`),
    whose text offset is then the sequence's last `logprob_offsets`."""
    seq = result.sequences.setdefault(event.index, SequenceResult())
    if event.token_id is not None:
        seq.token_ids.append(event.token_id)
    reported = reported_logprob(event)
    if reported is not None:
        seq.logprobs.append(reported)
        # An event's text is what its token makes certain (text held back for a partial character or a
        # possible stop string comes with a later token), so a token's text starts where the text stood.
        seq.logprob_offsets.append(len(seq.text))
    seq.text += event.text
    if event.prompt_logprobs is not None:
        result.prompt_logprobs = event.prompt_logprobs
    if event.finished:
        seq.finish_reason = event.finish_reason
        if event.usage:
            seq.completion_tokens = event.usage["completion_tokens"]
            result.prompt_tokens = event.usage["prompt_tokens"]
    return reported


DISCONNECT_POLL_S = 0.1


async def collect(engine: AsyncEngine, handle: RequestHandle, request: Request) -> RequestResult:
    """Run a request to the end; abort it if the client disconnects first."""
    result = RequestResult({})

    async def gather() -> RequestResult:
        async for event in engine.events(handle):
            record(result, event)
        return result

    task = asyncio.ensure_future(gather())
    try:
        while True:
            # Poll often: a client that left should free its KV blocks within ~0.1 s, not after its answer.
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise APIError("the client disconnected", status=499)
    finally:
        if not task.done():
            task.cancel()
            engine.abort(handle)


def sse_response(chunks: AsyncIterator[dict[str, Any]], on_close) -> StreamingResponse:
    """Server-sent events: one `data:` line per chunk, an `error` event on failure, then [DONE]."""

    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except Exception as err:
            api_error = api_error_from(err)
            if api_error.status >= 500:
                log.exception("stream failed")
            yield f"event: error\ndata: {json.dumps(error_body(api_error.message, api_error.status))}\n\n"
        finally:
            on_close()  # the client may be gone: make sure the request stops holding KV blocks
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def stream_chunk(object_name: str, response_id: str, created: int, model: str, choice: dict[str, Any],
                 include_usage: bool) -> dict[str, Any]:
    """One SSE chunk in OpenAI's envelope; with include_usage every chunk carries `usage: null`
    until the final usage chunk, as OpenAI's stream does."""
    out = {"id": response_id, "object": object_name, "created": created, "model": model,
           "system_fingerprint": None, "choices": [choice]}
    if include_usage:
        out["usage"] = None
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}

