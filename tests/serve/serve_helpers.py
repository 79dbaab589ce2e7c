"""A tiny checkpoint and a real `lmstack serve` subprocess on a free 127.0.0.1 port (or an app served in this
process, for tests that build its engine or need no process of the server's own), for the server tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import httpx
import torch
import uvicorn

from lmstack.model.checkpoint import save_model_dir
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.tokenizer import Tokenizer

WORDS = "the a cat dog sat ran on mat home blue red green one two three yes no hello world weather city".split()
CONTEXT = 1024
API_KEY = "test-key-123"  # the shared test server requires it
MODEL = "tiny-chat"  # the shared test server's model id (its checkpoint dir's name)
HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello cat"}]


def corpus() -> list[str]:
    texts = [f"{WORDS[i % 21]} {WORDS[(i * 7) % 21]} {WORDS[(i * 5 + 3) % 21]}." for i in range(300)]
    texts += ['{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}', '{"ok": true, "n": [1, 2]}'] * 20
    return texts


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    tokenizer = Tokenizer.train(corpus(), vocab_size=300, show_progress=False, min_frequency=1)
    cfg = ModelConfig(arch="llama", vocab_size=320, block_size=CONTEXT, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    model = build_model(cfg, seed=seed).eval()
    with torch.no_grad():  # random init gives nearly flat logits; sharpen them so greedy choices are clear
        model.lm_head.weight.mul_(20)
    return save_model_dir(path, model, tokenizer)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(ckpt: Path, *extra: str, env: dict[str, str] | None = None, startup_s: float = 90):
    """Start `lmstack serve`, wait for /health 200, yield the base URL; SIGTERM it afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "lmstack.cli", "serve", str(ckpt), "--port", str(port),
           "--set", "engine.dtype=float32", *extra]
    log = open(ckpt.parent / f"server-{port}.log", "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{Path(log.name).read_text()}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {startup_s}s:\n{Path(log.name).read_text()}")
            time.sleep(0.2)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def metric(base: str, name: str) -> float:
    """One unlabelled sample from GET /metrics."""
    for line in httpx.get(f"{base}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@contextlib.contextmanager
def in_process_server(app):
    """Serve `app` with uvicorn in a thread of this process; yields the base URL once it accepts connections."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def serve_here(ckpt: Path, *extra: str):
    """`lmstack serve CKPT EXTRA` in this process: the command's checks, and the app it makes, served by uvicorn in a
    thread; yields the base URL once the model is loaded. For what needs no signal or process of the server's own: a
    subprocess costs seconds of start-up (torch's import)."""
    from lmstack.cli import main

    made = []
    threads = torch.get_num_threads()
    try:
        # its uvicorn.run, which would serve until the process ends, hands the app over instead
        with mock.patch.object(uvicorn, "run", lambda app, **_: made.append(app)):
            assert main(["serve", str(ckpt), "--port", str(free_port()), *extra]) == 0
    finally:
        torch.set_num_threads(threads)  # serve sets its process's, which here is the test session's
    with in_process_server(made[0]) as base:
        wait_for(lambda: httpx.get(f"{base}/health").json()["status"] != "loading")
        health = httpx.get(f"{base}/health")
        assert health.status_code == 200, health.text
        yield base
