"""Production behaviour: /health while loading (and after a failed load), 429 when the queue is full, graceful shutdown on SIGTERM."""

import signal
import socket
import subprocess
import sys
import threading

import httpx
import openai
import pytest
from serve_helpers import in_process_server, metric, running_server, wait_for

from lmstack.infer.engine import Engine, EngineConfig
from lmstack.serve.app import create_app
from lmstack.serve.config import ServeConfig


def test_health_is_503_while_loading_then_200(checkpoint):
    release = threading.Event()

    def slow_load():
        release.wait(timeout=60)
        return Engine.from_checkpoint(checkpoint, EngineConfig(dtype="float32"))

    try:
        with in_process_server(create_app(slow_load, ServeConfig(), "tiny")) as base:
            loading = httpx.get(f"{base}/health")
            assert loading.status_code == 503 and loading.json()["status"] == "loading"
            busy = httpx.post(f"{base}/v1/completions", json={"prompt": "hi"})
            assert busy.status_code == 503 and busy.json()["error"]["code"] == "model_loading"
            release.set()
            wait_for(lambda: httpx.get(f"{base}/health").status_code == 200)
            assert httpx.get(f"{base}/health").json()["status"] == "ready"
            assert httpx.post(f"{base}/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200
    finally:
        release.set()


def test_a_model_that_fails_to_load_is_reported_not_waited_for(tmp_path):
    def failing_load():  # what loading an incomplete checkpoint dir raises
        return Engine.from_checkpoint(tmp_path, EngineConfig(dtype="float32"))

    (tmp_path / "config.json").write_text('{"model": {}}')
    with in_process_server(create_app(failing_load, ServeConfig(), "tiny")) as base:
        wait_for(lambda: httpx.get(f"{base}/health").json()["status"] != "loading")
        health = httpx.get(f"{base}/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        assert "has no model.safetensors" in health.json()["error"]
        for response in (httpx.get(f"{base}/v1/models"), httpx.post(f"{base}/v1/completions", json={"prompt": "hi"})):
            error = response.json()["error"]
            assert response.status_code == 503 and error["code"] == "model_load_failed"
            assert "has no model.safetensors" in error["message"] and "retry" not in error["message"]


def test_a_busy_port_is_one_clear_error_before_anything_loads(checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run([sys.executable, "-m", "lmstack.cli", "serve", str(checkpoint), "--port", str(port)],
                             capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr and "--port" in run.stderr
    assert "Traceback" not in run.stderr and "terminate called" not in run.stderr


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
