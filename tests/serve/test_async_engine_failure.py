"""A step that raises inside the server's engine thread fails the requests of that step with a 500, and only those:
the others (waiting for a later step) finish with the tokens they would have had. It failed every request in flight,
though the engine now cleans up after the failed step itself. An error outside a step stops the engine for good:
the waiting requests get a 500, /health and new requests a 503, each naming the error."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from serve_helpers import MODEL, in_process_server, wait_for

from faults import FAULT_BETWEEN_STEPS, BrokenConstraint, EngineFailingBetweenSteps
from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingParams
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.serve.app import create_app
from lmstack.serve.async_engine import AsyncEngine
from lmstack.serve.config import ServeConfig
from lmstack.serve.errors import APIError
from lmstack.serve.metrics import ServerMetrics

GREEDY = SamplingParams(max_tokens=6, temperature=0)


def engine() -> Engine:
    model = build_model(ModelConfig(arch="llama", vocab_size=64, block_size=32, n_layer=1, n_head=2, n_embd=32), seed=0)
    return Engine(model, None, EngineConfig(block_size=4, num_blocks=64, max_num_seqs=1, dtype="float32"))


def test_a_failed_step_fails_its_own_requests_and_the_others_finish():
    reference = engine().generate([[1, 2, 3]], GREEDY)[0].outputs[0].token_ids

    async def serve_both():
        served = AsyncEngine(engine(), ServerMetrics(), max_queue=8)
        served.start(asyncio.get_running_loop())
        broken = served.submit([9, 8, 7], SamplingParams(max_tokens=6, temperature=0, constraint=BrokenConstraint))
        waiting = served.submit([1, 2, 3], GREEDY)  # one sequence a step: it waits for the broken one's step

        async def tokens(handle):
            return [event.token_id async for event in served.events(handle) if event.token_id is not None]

        try:
            return await asyncio.gather(tokens(broken), tokens(waiting), return_exceptions=True)
        finally:
            served.stop()

    failed, finished = asyncio.run(serve_both())
    assert isinstance(failed, APIError) and failed.status == 500 and "engine failed while generating" in failed.message
    assert finished == reference


def test_an_error_outside_a_step_answers_the_waiting_request_and_then_every_new_one(checkpoint):
    """The engine thread died without a word: the request waited forever, /health stayed 200, new requests hung."""
    def load():
        return EngineFailingBetweenSteps.from_checkpoint(checkpoint, EngineConfig(dtype="float32"))

    with in_process_server(create_app(load, ServeConfig(), MODEL)) as base:
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200)
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=10)
        with pytest.raises(openai.APIStatusError) as waited:
            client.completions.create(model=MODEL, prompt="the cat", max_tokens=4)
        assert waited.value.status_code == 500
        assert f"the engine stopped after an unexpected error (RuntimeError: {FAULT_BETWEEN_STEPS})" in \
            waited.value.message
        health = httpx.get(f"{base}/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert FAULT_BETWEEN_STEPS in health.json()["error"]
        for stream in (False, True):  # refused before a stream starts, as before any other work
            with pytest.raises(openai.APIStatusError) as refused:
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=4, stream=stream)
            assert refused.value.status_code == 503 and refused.value.code == "engine_failed"
            assert FAULT_BETWEEN_STEPS in refused.value.message and "restart the server" in refused.value.message
