"""Production behaviour: /health while loading, 429 when the queue is full, graceful shutdown on SIGTERM."""

import signal
import threading
import time

import httpx
import openai
import pytest
import uvicorn
from serve_helpers import free_port, metric, running_server

from lmstack.infer.engine import Engine, EngineConfig
from lmstack.serve.app import create_app
from lmstack.serve.config import ServeConfig


def test_health_is_503_while_loading_then_200(checkpoint):
    release = threading.Event()

    def slow_load():
        release.wait(timeout=60)
        return Engine.from_checkpoint(checkpoint, EngineConfig(dtype="float32"))

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(slow_load, ServeConfig(), "tiny"), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        loading = httpx.get(f"{base}/health")
        assert loading.status_code == 503 and loading.json()["status"] == "loading"
        busy = httpx.post(f"{base}/v1/completions", json={"prompt": "hi"})
        assert busy.status_code == 503 and busy.json()["error"]["code"] == "model_loading"
        release.set()
        while httpx.get(f"{base}/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.get(f"{base}/health").json()["status"] == "ready"
        assert httpx.post(f"{base}/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def one_slot_server(checkpoint):
    """One sequence at a time and one waiting request: easy to fill."""
    with running_server(checkpoint, "--max-queue", "1", "--set", "engine.max_num_seqs=1") as (base, proc):
        yield base, proc


def stream_all(base: str, max_tokens: int, out: dict) -> None:
    body = {"prompt": "hello", "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=120) as response:
        out["lines"] = [line for line in response.iter_lines() if line.startswith("data: ")]


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_full_queue_gets_429_then_sigterm_finishes_requests_in_flight(one_slot_server):
    base, proc = one_slot_server
    running, waiting = {}, {}
    threads = [threading.Thread(target=stream_all, args=(base, 900, running))]
    threads[0].start()
    wait_for(lambda: metric(base, "lmstack_running_sequences") == 1)
    threads.append(threading.Thread(target=stream_all, args=(base, 5, waiting)))
    threads[1].start()
    wait_for(lambda: metric(base, "lmstack_queue_depth") == 1)

    refused = httpx.post(f"{base}/v1/completions", json={"prompt": "hi", "max_tokens": 2})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0).completions.create(
            model="tiny-chat", prompt="hi", max_tokens=2)

    proc.send_signal(signal.SIGTERM)  # both accepted requests must still finish in full
    for thread in threads:
        thread.join(timeout=120)
    assert proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained
    for out, tokens in ((running, 900), (waiting, 5)):
        assert out["lines"][-1] == "data: [DONE]"
        assert f'"completion_tokens": {tokens}' in out["lines"][-2]
