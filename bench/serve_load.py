"""Load test of `lmstack serve`: aggregate output tokens/s and time to first token at 1, 8 and 32
concurrent streaming clients.

    python bench/serve_load.py                      # a small random model built on the fly
    python bench/serve_load.py --ckpt runs/x/final  # a real checkpoint

The server runs as a subprocess on 127.0.0.1 (as in production); clients are raw HTTP/SSE (httpx)
in this process so client-side parsing stays cheap. Every request generates exactly --max-tokens
tokens (ignore_eos), so throughputs compare like for like. The peer figure is our own single-client
throughput: continuous batching should make 32 clients at least 6x faster in aggregate.
Levels are interleaved over --rounds rounds and medians reported (the machine may be shared).
Last line: JSON {ours (32 clients' tok/s), peer (1 client's), ratio (= scaling_32_vs_1), tok_s: {1, 8, 32},
ttft_p50_s, ttft_p99_s, target_scaling, ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tqdm.auto import tqdm

from _args import require_positive

CONCURRENCY = (1, 8, 32)
TARGET_SCALING = 6.0


def build_checkpoint(directory: Path) -> Path:
    import torch

    from lmstack.model.checkpoint import save_model_dir
    from lmstack.model.config import ModelConfig
    from lmstack.model.gpt import build_model
    from lmstack.tokenizer import Tokenizer

    words = "the a cat dog sat ran on mat home blue red green one two three yes no hello world".split()
    corpus = [" ".join(words[(i * k) % len(words)] for k in (1, 3, 7, 11)) for i in range(500)]
    tokenizer = Tokenizer.train(corpus, vocab_size=512, show_progress=False, min_frequency=1)
    cfg = ModelConfig(arch="llama", vocab_size=512, block_size=1024, n_layer=4, n_head=4, n_kv_head=2, n_embd=256)
    model = build_model(cfg, seed=0).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return save_model_dir(directory / "bench-model", model, tokenizer)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(ckpt: Path, port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lmstack.cli", "serve", str(ckpt), "--port", str(port), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("server did not become healthy in 180 s")


async def one_request(http: httpx.AsyncClient, prompt: str, max_tokens: int) -> tuple[float, int, float]:
    """-> (time to first token, tokens received, total seconds) of one streamed completion."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, tokens = None, 0
    async with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter() - start
    return (first if first is not None else time.perf_counter() - start), tokens, time.perf_counter() - start


async def run_level(base: str, clients: int, requests_each: int, max_tokens: int, bar) -> dict:
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as http:
        async def client(c: int) -> list[tuple[float, int, float]]:
            out = []
            for r in range(requests_each):
                out.append(await one_request(http, f"hello {c} {r} the cat sat on", max_tokens))
                bar.update(1)
            return out

        start = time.perf_counter()
        results = [x for per_client in await asyncio.gather(*(client(c) for c in range(clients))) for x in per_client]
        wall = time.perf_counter() - start
    ttfts = sorted(r[0] for r in results)
    return {"clients": clients, "requests": len(results), "tokens": sum(r[1] for r in results), "wall_s": wall,
            "tok_s": sum(r[1] for r in results) / wall, "ttft_p50_s": statistics.median(ttfts),
            "ttft_p99_s": ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", default=None, help="checkpoint dir (default: a small random model)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level and round")
    parser.add_argument("--rounds", type=int, default=3, help="levels are interleaved per round; medians reported")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="server --set KEY=VALUE")
    args = parser.parse_args()
    require_positive(parser, args, "max_tokens", "requests", "rounds")

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.ckpt) if args.ckpt else build_checkpoint(Path(tmp))
        port = free_port()
        proc = start_server(ckpt, port, [x for kv in args.overrides for x in ("--set", kv)])
        base = f"http://127.0.0.1:{port}"
        runs: dict[int, list[dict]] = {c: [] for c in CONCURRENCY}
        try:
            asyncio.run(run_level(base, 4, 1, 8, tqdm(disable=True)))  # warm-up: first-call costs out of the way
            # Rounds interleave the levels, so a slow spell on a shared machine hits all of them alike.
            for round_index in range(args.rounds):
                for clients in CONCURRENCY:
                    requests_each = max(1, args.requests // clients) if clients > 1 else max(4, args.requests // 8)
                    with tqdm(total=clients * requests_each, desc=f"round {round_index} {clients:2d} clients",
                              unit="req") as bar:
                        runs[clients].append(asyncio.run(run_level(base, clients, requests_each, args.max_tokens, bar)))
                    print(json.dumps(runs[clients][-1]), flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    median = {c: {key: statistics.median(r[key] for r in runs[c]) for key in ("tok_s", "ttft_p50_s", "ttft_p99_s")}
              for c in CONCURRENCY}
    scaling = median[32]["tok_s"] / median[1]["tok_s"]
    print(json.dumps({"metric": "serve_output_tok_s (median of rounds)", "ours": round(median[32]["tok_s"], 1),
                      "peer": round(median[1]["tok_s"], 1), "ratio": round(scaling, 2),
                      "tok_s": {str(c): round(median[c]["tok_s"], 1) for c in CONCURRENCY},
                      "ttft_p50_s": {str(c): round(median[c]["ttft_p50_s"], 4) for c in CONCURRENCY},
                      "ttft_p99_s": {str(c): round(median[c]["ttft_p99_s"], 4) for c in CONCURRENCY},
                      "ours_32_clients_tok_s": round(median[32]["tok_s"], 1),
                      "peer_1_client_tok_s": round(median[1]["tok_s"], 1),
                      "scaling_32_vs_1": round(scaling, 2), "target_scaling": TARGET_SCALING,
                      "meets_target": scaling >= TARGET_SCALING, "rounds": args.rounds,
                      "max_tokens": args.max_tokens, "cpu_count": os.cpu_count()}))


if __name__ == "__main__":
    main()
