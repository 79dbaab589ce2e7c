"""Requests that once crashed the server (500), were silently misread (200), or got an error naming the wrong
field: each now gets a 4xx in OpenAI's shape naming the field and the fix, and the server loses nothing."""

import time

import httpx
import openai
import pytest
from serve_helpers import API_KEY, CONTEXT, MODEL, metric, serve_here

AUTH = {"Authorization": f"Bearer {API_KEY}"}
USER = [{"role": "user", "content": "hi"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def deep_schema(levels: int) -> dict:
    schema = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


# kwargs of client.chat.completions.create -> (the param the error names, words the message must hold)
BAD_CHAT = {
    "seed beyond 64 bits (was a 500)": (dict(seed=2**70), "seed", "64 bits"),
    "tool schema nested 100 deep (was a 500)": (dict(tools=[{"type": "function", "function": {
        "name": "f", "parameters": deep_schema(100)}}]), "tools", "levels deep"),
    "top_logprobs without logprobs (was ignored)": (dict(top_logprobs=3), "top_logprobs", "logprobs: true"),
    "tool result without tool_call_id (was accepted)": (dict(messages=[
        *USER, {"role": "assistant", "content": None, "tool_calls": [CALL]}, {"role": "tool", "content": "42"}]),
        "messages.2.tool_call_id", "tool_call_id"),
    "user message without content (was accepted)": (dict(messages=[{"role": "user"}]), "messages.0.content",
                                                    "needs content"),
    "image content part": (dict(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/cat.png"}}]}]), "messages.0.content", "text parts"),
    "tool_choice not a choice": (dict(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="any"),
                                 "tool_choice", '"required"'),
    "max_completion_tokens 0": (dict(max_completion_tokens=0), "max_completion_tokens", "at least 1"),
    "logit_bias id outside the vocab": (dict(logit_bias={"99999": 5}), "logit_bias", "outside the vocab"),
    "stop_token_ids outside the vocab": (dict(extra_body={"stop_token_ids": [99999]}), "stop_token_ids",
                                         "outside the vocab"),
    "conversation longer than the context, no max_tokens": (dict(messages=[
        {"role": "user", "content": "cat " * CONTEXT}]), "messages", "shorten the prompt"),
    "tool result answering no earlier call (was accepted)": (dict(messages=[
        *USER, {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_9", "content": "42"}]), "messages.2.tool_call_id",
        "those so far: ['call_1']"),
    "tool result with no assistant tool call before it (was accepted)": (dict(messages=[
        *USER, {"role": "tool", "tool_call_id": "call_1", "content": "42"}]), "messages.1.tool_call_id",
        "no earlier assistant message has tool_calls"),
    "tool call arguments that are not JSON (was accepted)": (dict(messages=[
        *USER, {"role": "assistant", "content": None, "tool_calls": [
            {**CALL, "function": {"name": "f", "arguments": "{city: Paris"}}]}]),
        "messages.1.tool_calls.0.function.arguments", "not valid JSON"),
    "tool call without an id (its result read as answering nothing)": (dict(messages=[
        *USER, {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
            "name": "f", "arguments": "{}"}}]}]), "messages.1.tool_calls.0.id", "needs an id"),
    "min_tokens under response_format (was ignored)": (
        dict(response_format={"type": "json_object"}, extra_body={"min_tokens": 2}), "min_tokens", "response_format"),
}

BAD_COMPLETIONS = {
    "suffix (was ignored)": (dict(prompt="hi", suffix="end"), "suffix", "not supported"),
    "best_of above n (was ignored)": (dict(prompt="hi", best_of=3), "best_of", "n=3"),
    "prompt of floats": (dict(prompt=[1.5, 2.5]), "prompt", "list of token ids"),
    "score a prompt that fills the context": (dict(prompt=[5] * CONTEXT, max_tokens=0, echo=True, logprobs=0),
                                              "prompt", "shorten the prompt"),
    "a batch's token id outside the vocab (was param 'prompt')": (dict(prompt=[[1, 2], [99999]]), "prompt.1",
                                                                  "outside the vocab"),
    "text and token ids in one batch": (dict(prompt=["def", [99999]]), "prompt", "all text or all token ids"),
}


def refused(call, status: int = 400) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    assert caught.value.status_code == status, caught.value
    return caught.value


@pytest.mark.parametrize("case", sorted(BAD_CHAT))
def test_bad_chat_request_is_a_400_naming_the_field(client, case):
    kwargs, param, words = BAD_CHAT[case]
    error = refused(lambda: client.chat.completions.create(**{"model": MODEL, "messages": USER, "max_tokens": 2,
                                                              **kwargs}))
    assert error.param == param and words in error.message, error.message
    assert error.type == "invalid_request_error"


@pytest.mark.parametrize("case", sorted(BAD_COMPLETIONS))
def test_bad_completions_request_is_a_400_naming_the_field(client, case):
    kwargs, param, words = BAD_COMPLETIONS[case]
    error = refused(lambda: client.completions.create(**{"model": MODEL, "max_tokens": 2, **kwargs}))
    assert error.param == param and words in error.message, error.message
    assert "prompt=1" not in error.message  # the score-only check once named itself the request's field


# Bodies the SDK will not send (it refuses NaN, Infinity and lone surrogates), but other clients do
# -> (the param the error names, words the message must hold)
RAW_BODIES = {
    "lone surrogate escape (was a 500)": (
        rb'{"messages": [{"role": "user", "content": "cat \ud83d"}]}', "messages.0.content", "surrogate"),
    "lone surrogate in a completions prompt (was a 500)": (
        rb'{"prompt": ["hi", "\udc00"], "max_tokens": 2}', "prompt.1", "surrogate"),
    "Infinity (was accepted)": (
        b'{"messages": [{"role": "user", "content": "hi"}], "repetition_penalty": Infinity}', "repetition_penalty",
        "finite"),
    "NaN (was 'should be less than or equal to 2')": (
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature", "finite"),
    "JSON sent as text/plain": (b'{"messages": [{"role": "user", "content": "hi"}]}', None,
                                "Content-Type: application/json"),
    "empty body (was 'Field required')": (b"", None, "empty"),
    "latin-1 body (was 'There was an error parsing the body')": (
        '{"messages": "caf\xe9"}'.encode("latin-1"), None, "utf-8"),
}


@pytest.mark.parametrize("case", sorted(RAW_BODIES))
def test_raw_bad_body_is_a_400_naming_the_field(server, case):
    body, param, words = RAW_BODIES[case]
    path = "/v1/completions" if b'"prompt"' in body else "/v1/chat/completions"
    content_type = "text/plain" if "text/plain" in case else "application/json"
    response = httpx.post(f"{server}{path}", content=body, headers={**AUTH, "content-type": content_type}, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_a_refused_prompt_in_a_batch_leaves_no_other_prompt_running(server, client):
    aborted = metric(server, "lmstack_aborted_requests_total")
    error = refused(lambda: client.completions.create(model=MODEL, prompt=["hi", "cat " * CONTEXT], max_tokens=900,
                                                      extra_body={"ignore_eos": True}))
    # Nothing of the batch was submitted (once the first prompt was, and ran on with no one to read it): no request
    # runs, none needed aborting, the KV pool is all free
    assert metric(server, "lmstack_running_sequences") == 0 and metric(server, "lmstack_queue_depth") == 0
    assert metric(server, "lmstack_kv_blocks_free") == metric(server, "lmstack_kv_blocks_total")
    assert metric(server, "lmstack_aborted_requests_total") == aborted
    assert error.param == "prompt.1"


def test_after_the_bad_requests_the_server_serves_and_holds_no_blocks(server, client):
    for case in BAD_CHAT.values():
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(**{"model": MODEL, "messages": USER, "max_tokens": 2, **case[0]})
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "héllo 🐱"}],
                                           max_tokens=4, temperature=0)
    assert reply.usage.completion_tokens >= 1
    deadline = time.monotonic() + 10
    while metric(server, "lmstack_kv_blocks_free") != metric(server, "lmstack_kv_blocks_total"):
        assert time.monotonic() < deadline, "KV blocks still held after every request ended"
        time.sleep(0.05)
    assert httpx.get(f"{server}/health").status_code == 200


def test_a_kv_pool_smaller_than_the_context_bounds_requests_instead_of_refusing_them(checkpoint):
    """8 blocks of 16 = 128 tokens of KV for a 1024-token model: a request without max_tokens once got 'needs 1024
    KV slots but the cache holds 128; raise kv_memory_mb', which no client can do anything about."""
    with serve_here(checkpoint, "--set", "engine.num_blocks=8", "--set", "engine.dtype=float32") as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)
        assert client.models.list().data[0].max_model_len == 128
        reply = client.chat.completions.create(model=MODEL, messages=USER, temperature=0,
                                               extra_body={"ignore_eos": True})
        assert reply.usage.prompt_tokens + reply.usage.completion_tokens == 128
        error = refused(lambda: client.completions.create(model=MODEL, prompt="hi", max_tokens=500))
        assert error.param == "max_tokens" and "at most" in error.message and "kv_memory_mb" not in error.message
