"""A scripted OpenAI-compatible chat server: exact control of model outputs for agent and eval tests.

The script is JSON: `{"scripts": {"NAME": [turn, ...]}}`; the request's `model` picks the script.
The turn answered is the number of assistant messages already in the request, so a client that
crashes and re-sends a request gets the same answer (what durable-run tests need). A turn is

    {"content": "text" | null,
     "tool_calls": [{"name": "calculator", "arguments": {...} or "raw json text", "id": "call_1"}],
     "logprobs": [{"token": "It", "logprob": -0.1, "top_logprobs": [...]}, ...],  # optional
     "usage": {"prompt_tokens": 10, "completion_tokens": 3},                       # optional
     "fail": [429, 500],   # the first attempts at this turn get these HTTP statuses
     "retry_after": 1.5,   # ... with this Retry-After header (seconds)
     "empty": 1,           # the next attempts get an empty reply: no content, no tool calls
     "stream_cut": 1,      # the first attempts streamed stop after the first content chunk (no finish, no [DONE])
     "delay_s": 0.2,       # sleep before answering (timeouts, crash tests)
     "samples": ["a", "b"],  # contents for sampled (temperature > 0) calls, round-robin
     "answers": {"last user message": "content" or ["picked", "by", "request seed"], "*": "fallback"}}

Without "logprobs" the content is split into words and spaces, each with logprob -0.05.
`"contexts": {"NAME": tokens}` next to "scripts" gives that script's model a context, as our server has one: listed as
`max_model_len` in GET /v1/models, a prompt counted at ~3 characters a token (messages and tool schemas: denser than a
client's 4-character estimate, as a small model's tokenizer is) and refused, with our server's 400, when it does not
fit with max_tokens (default 1); the count is also the reply's usage.prompt_tokens.
`GET /_requests` returns every request received; streaming (SSE) and non-streaming both work.
Run: `python -m lmstack.agent.testing.scripted_server SCRIPT.json PORT`, or use `ScriptedServer`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

DEFAULT_LOGPROB = -0.05


def build_app(script: dict[str, Any]) -> FastAPI:
    app = FastAPI()
    scripts: dict[str, list[dict]] = script["scripts"]
    contexts: dict[str, int] = script.get("contexts", {})
    attempts: dict[tuple[str, int], int] = defaultdict(int)
    sample_counters: dict[tuple[str, int], itertools.count] = defaultdict(itertools.count)
    received: list[dict] = []

    @app.get("/_requests")
    async def requests_log():
        return received

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "script",
                                            **({"max_model_len": contexts[name]} if name in contexts else {})}
                                           for name in scripts]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        received.append(body)
        name = body.get("model") if body.get("model") in scripts else next(iter(scripts))
        turn_index = sum(1 for m in body.get("messages", []) if m.get("role") == "assistant")
        turns = scripts[name]
        prompt_tokens = max(1, len(json.dumps([body.get("messages", []), body.get("tools")])) // 3)
        if name in contexts and prompt_tokens + (body.get("max_tokens") or 1) > contexts[name]:
            message = (f"the prompt of {prompt_tokens} tokens + max_tokens={body.get('max_tokens') or 1} does not fit "
                       f"the context of {contexts[name]} tokens (max_model_len in GET /v1/models)")
            return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": "max_tokens",
                                           "code": "context_length_exceeded"}}, status_code=400)
        if turn_index >= len(turns):
            return JSONResponse({"error": {"message": f"script '{name}' has no turn {turn_index}"}}, status_code=400)
        turn = turns[turn_index]
        attempt = attempts[(name, turn_index)]
        attempts[(name, turn_index)] += 1
        if turn.get("delay_s"):
            await asyncio.sleep(turn["delay_s"])
        failures = turn.get("fail", [])
        if attempt < len(failures):
            headers = {"retry-after": str(turn["retry_after"])} if "retry_after" in turn else None
            return JSONResponse({"error": {"message": "scripted failure"}}, status_code=failures[attempt],
                                headers=headers)
        content = turn.get("content")
        if turn.get("samples") and (body.get("temperature") or 0) > 0:
            samples = turn["samples"]
            content = samples[next(sample_counters[(name, turn_index)]) % len(samples)]
        if "answers" in turn:  # per-prompt answers: one script serves a whole eval dataset
            content = _keyed_answer(turn["answers"], body)
        if attempt - len(failures) < turn.get("empty", 0):  # a model that said nothing
            content = ""
            message = _message({}, content, turn_index)
        else:
            message = _message(turn, content, turn_index)
        logprobs = _logprobs(turn, content) if body.get("logprobs") else None
        usage = turn.get("usage") or {
            "prompt_tokens": prompt_tokens if name in contexts
            else max(1, len(json.dumps(body.get("messages", []))) // 4),
            "completion_tokens": max(1, len(_tokens(content or "")) + 8 * len(message.get("tool_calls", []))),
        }
        usage = {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        if body.get("stream"):
            include_usage = (body.get("stream_options") or {}).get("include_usage", False)
            chunks = _stream_chunks(name, message, logprobs, finish, usage if include_usage else None,
                                    cut=attempt - len(failures) < turn.get("stream_cut", 0))
            return StreamingResponse(chunks, media_type="text/event-stream")
        choice = {"index": 0, "message": message, "finish_reason": finish,
                  "logprobs": {"content": logprobs} if logprobs is not None else None}
        return {"id": f"chatcmpl-{turn_index}", "object": "chat.completion", "created": int(time.time()),
                "model": name, "choices": [choice], "usage": usage}

    return app


def _message(turn: dict, content: str | None, turn_index: int) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    calls = []
    for i, call in enumerate(turn.get("tool_calls") or []):
        arguments = call["arguments"] if isinstance(call["arguments"], str) else json.dumps(call["arguments"])
        calls.append({"id": call.get("id", f"call_{turn_index}_{i}"), "type": "function",
                      "function": {"name": call["name"], "arguments": arguments}})
    if calls:
        message["tool_calls"] = calls
    return message


def _keyed_answer(answers: dict, body: dict) -> str | None:
    users = [m.get("content") for m in body.get("messages", []) if m.get("role") == "user"]
    answer = answers.get(users[-1] if users else "", answers.get("*"))
    if isinstance(answer, list):
        answer = answer[(body.get("seed") or 0) % len(answer)]
    return answer


def _tokens(text: str) -> list[str]:
    return re.findall(r"\s+|[^\s]+", text)


def _logprobs(turn: dict, content: str | None) -> list[dict]:
    if "logprobs" in turn:
        return turn["logprobs"]
    entries = []
    for token in _tokens(content or ""):
        alternative = math.log(max(1e-12, 1 - math.exp(DEFAULT_LOGPROB)))
        entries.append({"token": token, "logprob": DEFAULT_LOGPROB, "bytes": list(token.encode()),
                        "top_logprobs": [{"token": token, "logprob": DEFAULT_LOGPROB, "bytes": list(token.encode())},
                                         {"token": "<other>", "logprob": alternative, "bytes": None}]})
    return entries


async def _stream_chunks(model: str, message: dict, logprobs: list[dict] | None, finish: str, usage: dict | None,
                         cut: bool = False):
    def chunk(delta: dict, finish_reason: str | None = None, chunk_logprobs=None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason,
                  "logprobs": {"content": chunk_logprobs} if chunk_logprobs is not None else None}
        payload = {"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": int(time.time()),
                   "model": model, "choices": [choice]}
        return f"data: {json.dumps(payload)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    if message.get("content"):
        pieces = [entry["token"] for entry in logprobs] if logprobs else _tokens(message["content"])
        for i, piece in enumerate(pieces):
            yield chunk({"content": piece}, chunk_logprobs=[logprobs[i]] if logprobs else None)
            if cut:  # the connection ends cleanly mid-reply, as when a proxy or the server gives up
                return
    for index, call in enumerate(message.get("tool_calls", [])):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        yield chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                     "function": {"name": call["function"]["name"], "arguments": arguments[:half]}}]})
        yield chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[half:]}}]})
    yield chunk({}, finish_reason=finish)
    if usage is not None:
        payload = {"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": int(time.time()),
                   "model": model, "choices": [], "usage": usage}
        yield f"data: {json.dumps(payload)}\n\n"
    yield "data: [DONE]\n\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ScriptedServer:
    """The scripted server as a real uvicorn subprocess on 127.0.0.1; use as a context manager."""

    def __init__(self, script: dict[str, Any], startup_timeout_s: float = 30.0):
        self.script = script
        self.startup_timeout_s = startup_timeout_s
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "ScriptedServer":
        self._script_file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(self.script, self._script_file)
        self._script_file.close()
        # Its log goes to a file, not a pipe: a pipe nobody reads while it serves would fill up (64 KiB) and block the
        # server in the middle of a test. The file is read when it fails to start.
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lmstack.agent.testing.scripted_server", self._script_file.name, str(self.port)],
            stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.seek(0)
                log = self._log.read().decode(errors="replace")[-2000:]
                self.__exit__(None, None, None)
                raise RuntimeError(f"scripted server exited: {log}")
            try:
                urllib.request.urlopen(f"{self.base_url}/models", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError("scripted server did not start in time")

    def requests(self) -> list[dict]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_requests", timeout=5) as response:
            return json.loads(response.read())

    def __exit__(self, *exc) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        Path(self._script_file.name).unlink(missing_ok=True)


def main() -> None:
    import uvicorn

    script = json.loads(Path(sys.argv[1]).read_text())
    # A test may leave a client hung on a long `delay_s` (one it killed mid-call): stopping, answer nobody's wait.
    uvicorn.run(build_app(script), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()
