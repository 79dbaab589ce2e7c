"""POST /v1/completions: raw text or token-id prompts, `echo` with prompt logprobs (what
lm-evaluation-harness's `local-completions` uses to score loglikelihoods), and streaming."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request

from lmstack.infer.detokenizer import IncrementalDetokenizer
from lmstack.serve.errors import APIError
from lmstack.serve.generation import (RequestResult, check_values, collect, new_id, now, record,
                                      resolve_max_tokens, sampling_params, sse_response, stream_chunk, usage)
from lmstack.serve.schemas import CompletionRequest
from lmstack.serve.state import ServerState, server_state

router = APIRouter()
MAX_PROMPTS = 256


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    state = server_state(request, body.model)
    check_values(body)
    check_unsupported(body)
    prompts = split_prompts(body.prompt)
    # Token offsets only where an echo's logprobs list them
    encodings = [encode_prompt(state, p, prompt_param(prompts, i), with_offsets=body.echo and body.logprobs is not None)
                 for i, p in enumerate(prompts)]
    encoded = [ids for ids, _ in encodings]
    # max_tokens=0 scores the prompt alone (echo + logprobs); the engine always samples one token, which is dropped.
    score_only = body.max_tokens == 0
    # Every prompt is checked before any is submitted: a refused prompt must not leave the others running.
    runs = []
    for p, ids in enumerate(encoded):
        max_tokens = resolve_max_tokens(1 if score_only else body.max_tokens, len(ids), state.context, "max_tokens",
                                        prompt_param(prompts, p))
        runs.append((ids, sampling_params(body, max_tokens, logprobs=body.logprobs, prompt_logprobs=body.logprobs
                                          if body.echo and body.logprobs is not None else None)))
    handles = []
    try:
        for ids, params in runs:
            handles.append(state.engine.submit(ids, params))
    except Exception:
        for handle in handles:
            state.engine.abort(handle)
        raise
    response_id, created = new_id("cmpl"), now()
    if body.stream:
        chunks = stream_chunks(state, body, prompts, encodings, handles, score_only, response_id, created)
        return sse_response(chunks, on_close=lambda: [state.engine.abort(h) for h in handles])
    try:
        results = await asyncio.gather(*(collect(state.engine, h, request) for h in handles))
    finally:  # one prompt failing (or the client leaving) releases the others too; finished ones are no-ops
        for handle in handles:
            state.engine.abort(handle)
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for p, (prompt, (ids, text_offsets), result) in enumerate(zip(prompts, encodings, results)):
        prompt_tokens += len(ids)
        echoed = prompt_text(state, prompt) if body.echo else ""
        prompt_rows, prompt_offsets = [], []
        if body.echo and body.logprobs is not None:
            prompt_rows, prompt_offsets = echo_logprobs(state, ids, text_offsets, echoed, result.prompt_logprobs)
        for index in sorted(result.sequences):
            seq = result.sequences[index]
            records = [] if score_only else seq.logprobs
            offsets = [] if score_only else [len(echoed) + o for o in seq.logprob_offsets]
            completion_tokens += 0 if score_only else seq.completion_tokens
            logprobs = None
            if body.logprobs is not None:
                logprobs = logprobs_block(state, prompt_rows + records, prompt_offsets + offsets)
            choices.append({"index": p * body.n + index, "text": echoed + ("" if score_only else seq.text),
                            "logprobs": logprobs, "finish_reason": "length" if score_only else seq.finish_reason})
    return {"id": response_id, "object": "text_completion", "created": created, "model": state.model_name,
            "system_fingerprint": None, "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}


def check_unsupported(body: CompletionRequest) -> None:
    """OpenAI fields that would change the answer, refused rather than silently ignored."""
    if body.suffix:
        raise APIError("suffix is not supported: the model only continues the prompt; leave suffix out",
                       param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(f"best_of={body.best_of} is not supported (every sample is returned); leave it out, or ask for "
                       f"n={body.best_of} samples and pick among them", param="best_of")


def split_prompts(prompt: str | list) -> list[str | list[int]]:
    """OpenAI's four prompt shapes -> a list of prompts, each text or token ids."""
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        prompts = [prompt]
    else:
        prompts = list(prompt)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise APIError("prompt must be a non-empty string, token-id list, or list of them", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise APIError(f"at most {MAX_PROMPTS} prompts per request, got {len(prompts)}; split the batch",
                       param="prompt")
    return prompts


def prompt_param(prompts: list, p: int) -> str:
    """The field an error about prompt p names: `prompt`, or `prompt.1` in a batch."""
    return "prompt" if len(prompts) == 1 else f"prompt.{p}"


def encode_prompt(state: ServerState, prompt: str | list[int], param: str,
                  with_offsets: bool = False) -> tuple[list[int], list[int] | None]:
    """(ids, text offsets). Text gets bos and our tokenizer, as the engine does, and with_offsets each token's start
    in the text from its encoding (the bos, which the echoed text does not show, at 0). Token ids are used as given;
    their offsets (None here) come from decoding them, when asked (`decoded_offsets`)."""
    if isinstance(prompt, str):
        bos = [] if state.tokenizer.bos_id is None else [state.tokenizer.bos_id]
        if not with_offsets:
            return bos + state.tokenizer.encode(prompt), None
        ids, starts = state.tokenizer.encode_with_offsets(prompt)
        return bos + ids, [0] * len(bos) + starts
    bad = [t for t in prompt if not 0 <= t < state.vocab_size]
    if bad:
        raise APIError(f"{param}: token ids {bad[:5]} are outside the vocabulary [0, {state.vocab_size})",
                       param=param)
    return list(prompt), None


def prompt_text(state: ServerState, prompt: str | list[int]) -> str:
    return prompt if isinstance(prompt, str) else state.tokenizer.decode(prompt)


def scored_prompt(prompt_ids: list[int], prompt_records: list) -> list[tuple[int, float | None, list | None]]:
    """The prompt's (token, logprob, top) rows. The first token has no logprob (nothing predicts it):
    None, as OpenAI and vLLM give."""
    rows = []
    for i, token_id in enumerate(prompt_ids):
        scored = prompt_records[i] if i < len(prompt_records) else None
        rows.append((token_id, scored.logprob if scored else None, scored.top if scored else None))
    return rows


def echo_logprobs(state: ServerState, ids: list[int], text_offsets: list[int] | None, echoed: str,
                  prompt_records: list | None) -> tuple[list, list[int]]:
    """An echoed prompt's logprob rows and each token's offset in the echoed text (from its encoding, or, for a
    token-id prompt, by decoding it)."""
    offsets = text_offsets if text_offsets is not None else decoded_offsets(state, ids, len(echoed))
    return scored_prompt(ids, prompt_records or []), offsets


def decoded_offsets(state: ServerState, ids: list[int], text_length: int) -> list[int]:
    """Where each token of a token-id prompt starts in its echoed (decoded) text of `text_length` characters.
    Decoded incrementally, as the engine decodes output (linear in the prompt): a token that ends inside a
    multi-byte character contributes nothing, the one that completes it the whole character."""
    detokenizer = IncrementalDetokenizer(state.tokenizer, stop=[])
    offsets, length = [], 0
    for token_id in ids:
        offsets.append(min(length, text_length))
        length += len(detokenizer.add(token_id)[0])
    return offsets


def logprobs_block(state: ServerState, rows: list, text_offsets: list[int]) -> dict[str, Any]:
    """The legacy completions format: parallel lists of tokens, their logprobs, top alternatives, and
    each token's character offset in the returned `text`."""
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": list(text_offsets)}
    for token_id, logprob, top in rows:
        out["tokens"].append(state.tokenizer.token_str(token_id))
        out["token_logprobs"].append(logprob)
        out["top_logprobs"].append(None if top is None else {state.tokenizer.token_str(t): lp for t, lp in top})
    return out


async def stream_chunks(state: ServerState, body: CompletionRequest, prompts, encodings, handles, score_only: bool,
                        response_id: str, created: int) -> AsyncIterator[dict[str, Any]]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(index: int, text: str, logprobs=None, reason: str | None = None) -> dict[str, Any]:
        return stream_chunk("text_completion", response_id, created, state.model_name,
                            {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason},
                            include_usage)

    queue: asyncio.Queue = asyncio.Queue()

    async def pump(p: int, handle) -> None:
        try:
            async for event in state.engine.events(handle):
                await queue.put((p, event))
        except Exception as err:
            await queue.put((p, err))
        await queue.put((p, None))

    tasks = [asyncio.ensure_future(pump(p, h)) for p, h in enumerate(handles)]
    results = [RequestResult({}) for _ in handles]
    echoed = [prompt_text(state, prompt) if body.echo else "" for prompt in prompts]
    sequences = [(p, i) for p in range(len(prompts)) for i in range(body.n)]
    # With logprobs, a sequence's echo waits for its first event, which brings the prompt's logprobs; without, it goes
    # out at once.
    echo_pending = set(sequences) if body.echo and body.logprobs is not None else set()
    try:
        if body.echo and body.logprobs is None:
            for p, index in sequences:
                yield chunk(p * body.n + index, echoed[p])
        remaining = len(handles)
        while remaining:
            p, event = await queue.get()
            if event is None:
                remaining -= 1
                continue
            if isinstance(event, Exception):
                raise event
            reported = record(results[p], event)  # None without logprobs: the engine then reports none
            index = p * body.n + event.index
            if (p, event.index) in echo_pending:
                echo_pending.discard((p, event.index))
                ids, text_offsets = encodings[p]
                rows, offsets = echo_logprobs(state, ids, text_offsets, echoed[p], event.prompt_logprobs)
                yield chunk(index, echoed[p], logprobs_block(state, rows, offsets))
            if not score_only and (event.text or reported):
                block = None
                if reported:  # record() noted where the token's text starts in the generated text; the echo precedes
                    offset = len(echoed[p]) + results[p].sequences[event.index].logprob_offsets[-1]
                    block = logprobs_block(state, [reported], [offset])
                yield chunk(index, event.text, block)
            if event.finished:
                yield chunk(index, "", reason="length" if score_only else event.finish_reason)
    finally:
        for task in tasks:
            task.cancel()
    if include_usage:
        prompt_tokens = sum(len(ids) for ids, _ in encodings)
        completion_tokens = 0 if score_only else sum(s.completion_tokens for r in results for s in r.sequences.values())
        yield {"id": response_id, "object": "text_completion", "created": created, "model": state.model_name,
               "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
