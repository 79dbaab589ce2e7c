"""A failure after streaming began reaches the client as an OpenAI `error` event, which the SDK raises."""

import asyncio

import httpx
import openai
import pytest
from fastapi import FastAPI

from lmstack.serve.errors import APIError
from lmstack.serve.generation import sse_response

CHUNK = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
         "choices": [{"index": 0, "delta": {"content": "partial"}, "logprobs": None, "finish_reason": None}]}


def failing_app(closed: list[bool]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat():
        async def chunks():
            yield CHUNK
            raise APIError("the engine failed while generating", status=500)

        return sse_response(chunks(), on_close=lambda: closed.append(True))

    return app


async def read_stream(app: FastAPI) -> tuple[list[str], Exception, str]:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    client = openai.AsyncOpenAI(base_url="http://test/v1", api_key="none", http_client=http, max_retries=0)
    received = []
    with pytest.raises(openai.APIError) as caught:
        stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                                      stream=True)
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    raw = (await http.post("/v1/chat/completions", json={})).text
    await http.aclose()
    return received, caught.value, raw


def test_mid_stream_failure_is_an_error_event_the_sdk_raises():
    closed: list[bool] = []
    received, error, raw = asyncio.run(read_stream(failing_app(closed)))
    assert received == ["partial"]
    assert "the engine failed while generating" in error.message
    assert raw.endswith('event: error\ndata: {"error": {"message": "the engine failed while generating", '
                        '"type": "server_error", "param": null, "code": null}}\n\ndata: [DONE]\n\n')
    assert closed == [True, True]  # the request is released however the stream ends
