"""32 concurrent streaming clients, 8 of which hang up mid-stream: the rest get full answers, and the
hung-up requests are aborted so the KV pool is all free again afterwards."""

import asyncio
import time

import httpx
import openai
import pytest
from serve_helpers import API_KEY, MODEL, metric
PROMPTS = [[{"role": "user", "content": text}] for text in ("hello cat", "two dogs ran", "blue mat", "yes no")]


async def full_answer(client: openai.AsyncOpenAI, messages) -> tuple[str, str, int]:
    stream = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0,
                                                  stream=True, stream_options={"include_usage": True})
    parts, reason, used = [], None, None
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            reason = chunk.choices[0].finish_reason or reason
        if chunk.usage:
            used = chunk.usage.completion_tokens
    return "".join(parts), reason, used


async def hang_up_after(client: openai.AsyncOpenAI, messages, chunks: int) -> int:
    stream = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=900, temperature=0,
                                                  stream=True)
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == chunks:
            break
    await stream.close()
    return seen


async def run_clients(base: str):
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=0, timeout=120)
    expected = [await full_answer(client, m) for m in PROMPTS]  # one at a time: the reference answers
    jobs = [hang_up_after(client, PROMPTS[i % 4], 3) if i % 4 == 3 else full_answer(client, PROMPTS[i % 4])
            for i in range(32)]
    results = await asyncio.gather(*jobs)
    await client.close()
    return expected, results


def test_disconnects_abort_and_everyone_else_gets_full_answers(server):
    aborted_before = metric(server, "lmstack_aborted_requests_total")
    expected, results = asyncio.run(run_clients(server))
    for i, result in enumerate(results):
        if i % 4 == 3:
            assert result == 3
        else:
            assert result == expected[i % 4], f"client {i} got a different answer under load"
            assert result[1] == "length" and result[2] == 24
    total = metric(server, "lmstack_kv_blocks_total")
    deadline = time.monotonic() + 10
    while metric(server, "lmstack_kv_blocks_free") != total and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(server, "lmstack_kv_blocks_free") == total
    assert metric(server, "lmstack_aborted_requests_total") - aborted_before == 8
    assert metric(server, "lmstack_running_sequences") == 0 and metric(server, "lmstack_queue_depth") == 0


def test_a_non_streaming_client_that_gives_up_is_aborted(server):
    aborted_before = metric(server, "lmstack_aborted_requests_total")
    # The client stops waiting long before 8 x 1000 tokens are ready, even on an idle machine.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/v1/completions", json={"prompt": "hi", "max_tokens": 1000, "n": 8, "ignore_eos": True},
                   headers={"Authorization": f"Bearer {API_KEY}"}, timeout=0.3)
    total = metric(server, "lmstack_kv_blocks_total")
    deadline = time.monotonic() + 10
    while metric(server, "lmstack_aborted_requests_total") == aborted_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server, "lmstack_aborted_requests_total") == aborted_before + 1
    while metric(server, "lmstack_kv_blocks_free") != total and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(server, "lmstack_kv_blocks_free") == total
