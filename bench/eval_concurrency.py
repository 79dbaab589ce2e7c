"""Eval throughput: 200 samples against our own server (`lmstack serve`) at concurrency 16 vs 1.

A small random model is saved as a checkpoint and served on 127.0.0.1; the same 200-sample task runs
with --max-concurrency 1 (the peer figure) and 16 (ours), each with no response cache, greedy.
The server batches concurrent requests, so 16 in flight should finish several times faster, and
greedy decoding must give identical scores (and, in float32, identical outputs). Medians of --repeats
runs; JSON last line.

    .venv/bin/python bench/eval_concurrency.py [--samples 200] [--repeats 3] [--checkpoint DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch

from _args import require_positive
from lmstack.agent.testing.scripted_server import free_port
from lmstack.evals.clients import make_client
from lmstack.evals.model import CachedModel
from lmstack.evals.runner import run_eval
from lmstack.evals.sample import Sample
from lmstack.evals.scorers import includes
from lmstack.evals.solvers import generate
from lmstack.evals.store import Store
from lmstack.evals.task import Task, TaskConfig


def tiny_checkpoint(path: Path) -> Path:
    from lmstack.data.sources import iter_documents
    from lmstack.model.checkpoint import save_model_dir
    from lmstack.model.config import ModelConfig
    from lmstack.model.gpt import build_model
    from lmstack.tokenizer import Tokenizer

    texts = [d.text for d in iter_documents("stdlib", limit=40)]
    tokenizer = Tokenizer.train(texts, vocab_size=1024, show_progress=False)
    model = build_model(ModelConfig(arch="llama", vocab_size=tokenizer.vocab_size, block_size=512, n_layer=4,
                                    n_head=4, n_kv_head=2, n_embd=256), seed=0)
    with torch.no_grad():  # random init gives nearly flat logits, where greedy ties flip on rounding noise
        model.lm_head.weight.mul_(20)
    return save_model_dir(path, model, tokenizer)


def start_server(checkpoint: Path, dtype: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "lmstack.cli", "serve", str(checkpoint), "--port", str(port),
                                "--set", f"engine.dtype={dtype}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"lmstack serve exited: {process.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return process, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("lmstack serve did not become healthy in 120 s")


def one_run(base_url: str, samples: list[Sample], concurrency: int, db: Path) -> tuple[float, dict, dict]:
    store = Store(db)
    model = CachedModel(make_client(base_url), store, max_concurrency=concurrency, use_cache=False)
    task = Task(dataset=samples, solver=generate(), scorer=includes(), name="concurrency",
                config=TaskConfig(max_tokens=16, temperature=0.0))
    started = time.perf_counter()
    outcome = run_eval(task, model, store, max_workers=concurrency, progress=False)
    seconds = time.perf_counter() - started
    outputs = {r.sample_id: r.output for r in store.samples(outcome.run_id)}
    assert outcome.summary["errors"] == 0, f"{outcome.summary['errors']} samples failed"
    return seconds, outputs, outcome.summary["scores"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--checkpoint", help="serve this checkpoint instead of a small random model")
    parser.add_argument("--dtype", default="float32",
                        help="the server's engine dtype (float32: batched and single decoding agree to rounding)")
    args = parser.parse_args()
    require_positive(parser, args, "samples", "repeats")
    if args.concurrency < 2:
        parser.error("--concurrency must be at least 2: it is compared with concurrency 1")
    work = Path(tempfile.mkdtemp(prefix="lmstack-bench-evals-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the checkpoint and one database per run


def measure(args: argparse.Namespace, work: Path) -> None:
    os.environ.setdefault("LMSTACK_HOME", str(work))
    checkpoint = Path(args.checkpoint) if args.checkpoint else tiny_checkpoint(work / "ckpt")
    samples = [Sample(id=f"s{i:03d}", input=f"def function_{i}(x):\n    return", target="x")
               for i in range(args.samples)]
    process, base_url = start_server(checkpoint, args.dtype)
    try:
        times: dict[int, list[float]] = {1: [], args.concurrency: []}
        results = {}
        for repeat in range(args.repeats):
            for concurrency in times:
                seconds, outputs, scores = one_run(base_url, samples, concurrency, work / f"r{repeat}-c{concurrency}.db")
                times[concurrency].append(seconds)
                results[concurrency] = (outputs, scores)
                print(f"repeat {repeat}: concurrency {concurrency:>2}: {seconds:.2f} s", flush=True)
    finally:
        process.terminate()
        process.wait(timeout=30)
    (outputs_one, scores_one), (outputs_many, scores_many) = results[1], results[args.concurrency]
    differing = sorted(k for k in outputs_one if outputs_one[k] != outputs_many.get(k))
    ours, peer = statistics.median(times[args.concurrency]), statistics.median(times[1])
    print(json.dumps({"metric": f"seconds for {args.samples} samples (median of {args.repeats})",
                      "ours": round(ours, 3), "ours_setting": f"concurrency {args.concurrency}",
                      "peer": round(peer, 3), "peer_setting": "concurrency 1",
                      "ratio": round(peer / ours, 2), "identical_scores": scores_one == scores_many,
                      "differing_outputs": len(differing), "dtype": args.dtype}))


if __name__ == "__main__":
    main()
