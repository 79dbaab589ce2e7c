"""Bad requests get 4xx errors in OpenAI's shape, and the server keeps serving afterwards."""

import httpx
import openai
import pytest
from serve_helpers import API_KEY, MODEL

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}

BAD_CHAT_BODIES = {
    "wrong type of messages": ({"messages": "hi"}, 400, "messages"),
    "empty messages": ({"messages": []}, 400, "messages"),
    "unknown role": ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    "content of the wrong type": ({"messages": [{"role": "user", "content": 5}]}, 400, None),
    "temperature not a number": ({"messages": USER, "temperature": "hot"}, 400, "temperature"),
    "negative max_tokens": ({"messages": USER, "max_tokens": -1}, 400, "max_tokens"),
    "huge max_tokens": ({"messages": USER, "max_tokens": 10**9}, 400, "max_tokens"),
    "n of zero": ({"messages": USER, "n": 0}, 400, "n"),
    "unknown model": ({"messages": USER, "model": "gpt-17"}, 404, "model"),
    "invalid tool schema": ({"messages": USER, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "nosuchtype"}}}]}, 400, "tools[0].function.parameters"),
    "tool schema not an object": ({"messages": USER, "tools": [{"type": "function", "function": {
        "name": "f", "parameters": "yes"}}]}, 400, None),
    "bad tool name": ({"messages": USER, "tools": [{"type": "function", "function": {"name": "a b"}}]}, 400, None),
    "tool_choice names a missing tool": ({"messages": USER, "tools": [TOOL], "tool_choice": {
        "type": "function", "function": {"name": "g"}}}, 400, "tool_choice"),
    "required without tools": ({"messages": USER, "tool_choice": "required"}, 400, "tool_choice"),
    "invalid response schema": ({"messages": USER, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"minimum": "zero"}}}}}}, 400, None),
    "json_schema without a schema": ({"messages": USER, "response_format": {"type": "json_schema"}}, 400, None),
    "logit_bias key not a token id": ({"messages": USER, "logit_bias": {"abc": 1}}, 400, "logit_bias"),
    "top_logprobs out of range": ({"messages": USER, "logprobs": True, "top_logprobs": 50}, 400, "top_logprobs"),
    "stream_options without stream": ({"messages": USER, "stream_options": {"include_usage": True}}, 400,
                                      "stream_options"),
}


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] and "param" in error and "code" in error
    if param is not None:
        assert error["param"] == param
    return error


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server, headers=AUTH, timeout=30) as client:
        yield client


@pytest.mark.parametrize("case", sorted(BAD_CHAT_BODIES))
def test_bad_chat_requests_get_openai_errors(http, case):
    body, status, param = BAD_CHAT_BODIES[case]
    assert_openai_error(http.post(CHAT, json=body), status, param)


def test_malformed_and_non_object_json(http):
    error = assert_openai_error(http.post(CHAT, content=b'{"messages": [', headers={"content-type": "application/json"}), 400)
    assert "JSON" in error["message"]
    assert_openai_error(http.post(CHAT, content=b"[1, 2]", headers={"content-type": "application/json"}), 400)


def test_oversized_body_is_413(http):
    huge = {"messages": [{"role": "user", "content": "x" * (5 * 2**20)}]}
    assert_openai_error(http.post(CHAT, json=huge), 413)


def test_bad_completions_requests(http):
    assert_openai_error(http.post("/v1/completions", json={"prompt": [1, 2, 10**6]}), 400, "prompt")
    assert_openai_error(http.post("/v1/completions", json={"prompt": []}), 400, "prompt")
    assert_openai_error(http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 5000}), 400, "max_tokens")
    assert_openai_error(http.post("/v1/completions", json={}), 400, "prompt")
    assert_openai_error(http.post("/v1/completions", json={"prompt": "hi", "stream_options": {"include_usage": True}}),
                        400, "stream_options")


def test_unknown_route_and_method(http):
    assert "see GET /v1/models" in assert_openai_error(http.get("/v1/nothing"), 404)["message"]
    assert_openai_error(http.get(CHAT), 405)


def test_api_key_is_required(server):
    assert_openai_error(httpx.post(f"{server}{CHAT}", json={"messages": USER}), 401)
    assert_openai_error(httpx.get(f"{server}/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(f"{server}/health").status_code == 200  # health stays open for orchestrators


def test_server_still_serves_after_bad_input(http, client):
    for body, _, _ in BAD_CHAT_BODIES.values():
        http.post(CHAT, json=body)
    reply = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4, temperature=0)
    assert reply.usage.completion_tokens >= 1
    assert http.get("/health").status_code == 200
