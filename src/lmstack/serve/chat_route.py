"""POST /v1/chat/completions: our chat template, tools, structured output, logprobs, streaming."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request

from lmstack.serve.errors import APIError
from lmstack.serve.generation import (RequestResult, check_values, collect, new_id, now, record,
                                      resolve_max_tokens, sampling_params, sse_response, stream_chunk, usage)
from lmstack.serve.schemas import ChatCompletionRequest, ChatMessage
from lmstack.serve.state import ServerState, server_state
from lmstack.serve.structured import check_schema
from lmstack.serve.tool_calls import ToolCallSplitter, merge_deltas
from lmstack.tokenizer import TOOL_CALL_START

router = APIRouter()


@dataclass
class ChatPlan:
    """How one chat request runs: the prompt, whether tool calls are parsed, the grammar, banned tokens."""
    prompt: list[int]
    parse_calls: bool
    grammar: str | None
    banned_ids: list[int]


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = server_state(request, body.model)
    check_values(body)
    check_messages(body.messages)
    if body.top_logprobs and not body.logprobs:  # as OpenAI and vLLM: top_logprobs alone would be silently ignored
        raise APIError("top_logprobs needs logprobs: true; set it, or leave top_logprobs out", param="top_logprobs")
    plan = plan_chat(state, body)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens = resolve_max_tokens(requested, len(plan.prompt), state.context, param, "messages")
    top = body.top_logprobs or 0
    params = sampling_params(body, max_tokens, logprobs=top if body.logprobs else None, banned_ids=plan.banned_ids,
                             constraint=state.grammars.constraint(plan.grammar) if plan.grammar else None)
    handle = state.engine.submit(plan.prompt, params)
    response_id, created = new_id("chatcmpl"), now()
    if body.stream:
        chunks = stream_chunks(state, body, plan, handle, response_id, created)
        return sse_response(chunks, on_close=lambda: state.engine.abort(handle))
    result = await collect(state.engine, handle, request)
    return chat_response(state, body, plan, result, response_id, created)


def check_messages(messages: list[ChatMessage]) -> None:
    """What OpenAI requires of a message beyond its field types: content, except on an assistant turn that
    calls tools; on a tool result the id of an earlier assistant tool call it answers; tool call arguments in JSON."""
    call_ids: list[str] = []  # of the assistant tool calls so far: what a tool message may answer
    for i, message in enumerate(messages):
        if message.role == "tool" and not message.tool_call_id:
            raise APIError(f"messages.{i}: a message with role 'tool' needs tool_call_id, the id of the assistant's "
                           "tool call it answers", param=f"messages.{i}.tool_call_id")
        if message.content is None and not (message.role == "assistant" and message.tool_calls):
            what = "content or tool_calls" if message.role == "assistant" else "content"
            raise APIError(f"messages.{i}: a message with role '{message.role}' needs {what}",
                           param=f"messages.{i}.content")
        if message.role == "tool" and message.tool_call_id not in call_ids:
            earlier = f"those so far: {call_ids[-5:]}" if call_ids else "no earlier assistant message has tool_calls"
            raise APIError(f"messages.{i}.tool_call_id '{message.tool_call_id}' answers no tool call of an earlier "
                           f"assistant message ({earlier}); send the assistant message with that call before it",
                           param=f"messages.{i}.tool_call_id")
        if message.role == "assistant":
            for j, call in enumerate(message.tool_calls or []):
                if not call.id:  # else the tool message answering it would read as answering nothing
                    raise APIError(f"messages.{i}.tool_calls.{j}: a tool call needs an id, which the tool message "
                                   "answering it names as tool_call_id", param=f"messages.{i}.tool_calls.{j}.id")
                check_arguments(call.function.arguments, f"messages.{i}.tool_calls.{j}.function.arguments")
                call_ids.append(call.id)


def check_arguments(arguments: str | dict, param: str) -> None:
    """A call's arguments are a JSON object, or its text (an empty one: no arguments, as the chat template reads it)."""
    if isinstance(arguments, dict) or not arguments.strip():
        return
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError as err:
        raise APIError(f"{param} is not valid JSON ({err.msg} at character {err.pos}); send the arguments as a JSON "
                       "object in a string", param=param) from None
    if not isinstance(parsed, dict):
        raise APIError(f"{param} must be a JSON object of named arguments, got {type(parsed).__name__}", param=param)


def plan_chat(state: ServerState, body: ChatCompletionRequest) -> ChatPlan:
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    functions = [t.function.model_dump() for t in body.tools or []]
    names = [fn["name"] for fn in functions]
    if len(set(names)) != len(names):
        raise APIError(f"tools: function names must be unique, got {names}", param="tools")
    choice = body.tool_choice or ("auto" if functions else "none")
    if not isinstance(choice, str):
        chosen = [fn for fn in functions if fn["name"] == choice.function.name]
        if not chosen:
            raise APIError(f"tool_choice names function '{choice.function.name}', which is not in tools {names}",
                           param="tool_choice")
    elif choice == "required" and not functions:
        raise APIError("tool_choice 'required' needs at least one tool in tools", param="tool_choice")
    prompt = state.tokenizer.render(messages, tools=body.tools and [t.model_dump() for t in body.tools],
                                    add_generation_prompt=True).ids
    grammar, banned, parse_calls = None, [], choice != "none"
    if choice == "required":
        grammar = state.grammars.tool_calls(functions, parallel=body.parallel_tool_calls)
    elif not isinstance(choice, str):
        grammar = state.grammars.tool_calls(chosen, parallel=False)
    else:
        for i, fn in enumerate(functions):  # checked even when not enforced: a broken schema is the caller's bug
            check_schema(fn["parameters"], f"tools[{i}].function.parameters")
        grammar = response_format_grammar(state, body)
        parse_calls = parse_calls and grammar is None
        if choice == "none" and functions:
            banned = [state.tokenizer.id(TOOL_CALL_START)]
    return ChatPlan(prompt, parse_calls, grammar, banned)


def response_format_grammar(state: ServerState, body: ChatCompletionRequest) -> str | None:
    fmt = body.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return state.grammars.json_schema({"type": "object"}, "response_format")
    if fmt.json_schema is None:
        raise APIError("response_format of type json_schema needs a json_schema object with a schema",
                       param="response_format.json_schema")
    return state.grammars.json_schema(fmt.json_schema.schema_, "response_format.json_schema.schema")


def finish_reason(reason: str | None, num_calls: int) -> str | None:
    return "tool_calls" if num_calls and reason == "stop" else reason


def logprob_entry(state: ServerState, token_id: int, logprob: float) -> dict[str, Any]:
    return {"token": state.tokenizer.token_str(token_id), "logprob": logprob,
            "bytes": list(state.tokenizer.token_bytes(token_id))}


def logprobs_block(state: ServerState, records: list[tuple[int, float, list[tuple[int, float]]]]) -> dict[str, Any]:
    return {"content": [{**logprob_entry(state, token, logprob),
                         "top_logprobs": [logprob_entry(state, t, lp) for t, lp in top]}
                        for token, logprob, top in records]}


def chat_response(state: ServerState, body: ChatCompletionRequest, plan: ChatPlan, result: RequestResult,
                  response_id: str, created: int) -> dict[str, Any]:
    choices = []
    for index in sorted(result.sequences):
        seq = result.sequences[index]
        splitter = ToolCallSplitter(plan.parse_calls)
        content, calls = merge_deltas(splitter.feed(seq.text) + splitter.finish())
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        choices.append({"index": index, "message": message,
                        "logprobs": logprobs_block(state, seq.logprobs) if body.logprobs else None,
                        "finish_reason": finish_reason(seq.finish_reason, len(calls))})
    completion_tokens = sum(s.completion_tokens for s in result.sequences.values())
    return {"id": response_id, "object": "chat.completion", "created": created, "model": state.model_name,
            "system_fingerprint": None, "choices": choices, "usage": usage(result.prompt_tokens, completion_tokens)}


async def stream_chunks(state: ServerState, body: ChatCompletionRequest, plan: ChatPlan, handle, response_id: str,
                        created: int) -> AsyncIterator[dict[str, Any]]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(index: int, delta: dict[str, Any], logprobs=None, reason: str | None = None) -> dict[str, Any]:
        return stream_chunk("chat.completion.chunk", response_id, created, state.model_name,
                            {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason},
                            include_usage)

    splitters = {i: ToolCallSplitter(plan.parse_calls) for i in range(body.n)}
    for index in range(body.n):
        yield chunk(index, {"role": "assistant", "content": ""})
    result = RequestResult({})
    async for event in state.engine.events(handle):
        reported = record(result, event)  # None without logprobs: the engine then reports none
        splitter = splitters[event.index]
        deltas = splitter.feed(event.text) + (splitter.finish() if event.finished else [])
        logprobs = logprobs_block(state, [reported]) if reported else None
        if logprobs and not deltas:
            deltas = [{"content": ""}]
        for i, delta in enumerate(deltas):
            yield chunk(event.index, delta, logprobs if i == 0 else None)
        if event.finished:
            yield chunk(event.index, {}, reason=finish_reason(event.finish_reason, splitter.num_calls))
    if include_usage:
        completion_tokens = sum(s.completion_tokens for s in result.sequences.values())
        yield {"id": response_id, "object": "chat.completion.chunk", "created": created, "model": state.model_name,
               "system_fingerprint": None, "choices": [], "usage": usage(result.prompt_tokens, completion_tokens)}
