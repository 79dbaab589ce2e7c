"""Decode speed on an NVIDIA GPU: our engine eager and with CUDA graphs against `transformers` generate, same
weights (GPT-2-124M-sized, random), bf16 (or fp32), same run.

Figures (medians, greedy, fixed token counts): bs=1 tok/s of each, throughput with 32 concurrent requests, and
the distance to the memory-bandwidth bound (the bytes a decode step reads over the device-to-device copy rate
measured at the start of the run). At bs=1 a 124M model on a GPU is launch-bound, not bandwidth-bound: dozens of
small kernels per step, each a few microseconds, which is what CUDA graphs remove. Also checks that the
graph-replayed greedy tokens equal the eager engine's. The last line is JSON.

    python bench/decode_gpu.py [--tokens 128] [--repeats 5] [--device cuda]
    # --device cpu runs the same code path without graphs (the engine ignores cuda_graphs off NVIDIA)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch

from _args import require_positive
from decode import decode_read_bytes, hf_run, interleaved_medians, ours_run
from lmstack.infer.engine import Engine, EngineConfig
from lmstack.model.checkpoint import save_model_dir
from lmstack.model.config import ModelConfig
from lmstack.model.convert_hf import export_hf
from lmstack.model.gpt import build_model

CONCURRENT = 32


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a 1 GiB device-to-device copy, counting bytes read and written (best of 5)."""
    if device.type != "cuda":
        return float("nan")
    src = torch.randn(2**28, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * src.numel() * src.element_size() / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per request")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="float32: graph-replayed greedy tokens should equal the eager engine's exactly")
    parser.add_argument("--layers", type=int, default=12, help="12 = GPT-2 124M; fewer for a quick CPU check")
    args = parser.parse_args()
    require_positive(parser, args, "tokens", "repeats", "layers")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():  # `make bench` on a machine without one
        print(json.dumps({"metric": "decode tok/s on an NVIDIA GPU", "skipped": "no CUDA GPU is visible "
                          "(--device cpu runs the same code path on the CPU)"}))
        return
    dtype = getattr(torch, args.dtype)
    cfg = ModelConfig(arch="gpt2", vocab_size=50257, block_size=1024, n_layer=args.layers, n_head=12, n_embd=768)
    model = build_model(cfg, seed=0)
    bandwidth = copy_bandwidth(device)
    engine_config = EngineConfig(block_size=16, max_num_seqs=CONCURRENT, kv_memory_mb=1024)
    with tempfile.TemporaryDirectory() as tmp:
        save_model_dir(Path(tmp) / "ours", model, None)
        export_hf(Path(tmp) / "ours", Path(tmp) / "hf", dtype=args.dtype)
        model.to(device, dtype)  # both engines decode with these weights
        engines = {"eager": Engine(model, None, engine_config),
                   "cuda_graphs": Engine(model, None, dataclasses.replace(engine_config, cuda_graphs=True))}
        runs = {f"ours_{name}": ours_run(engine, 1, args.tokens) for name, engine in engines.items()}
        runs |= {f"ours_{name}_{CONCURRENT}": ours_run(engine, CONCURRENT, args.tokens)
                 for name, engine in engines.items()}
        runs["transformers"] = hf_run(Path(tmp) / "hf", dtype, args.tokens, device=args.device)
        seconds = interleaved_medians(runs, args.repeats)
    tok_s = {name: args.tokens * (CONCURRENT if name.endswith(f"_{CONCURRENT}") else 1) / s
             for name, s in seconds.items()}
    eager_tokens = [o.token_ids for o in runs["ours_eager_32"]()]
    graph_tokens = [o.token_ids for o in runs["ours_cuda_graphs_32"]()]
    bound = bandwidth / decode_read_bytes(model)
    best = max(tok_s["ours_eager"], tok_s["ours_cuda_graphs"])
    print(json.dumps({
        "metric": "decode tok/s, GPT-2-124M-sized", "dtype": args.dtype, "device": torch.cuda.get_device_name(device)
        if device.type == "cuda" else "cpu", "layers": args.layers, "tokens": args.tokens,
        "ours_eager_bs1": round(tok_s["ours_eager"], 1), "ours_cuda_graphs_bs1": round(tok_s["ours_cuda_graphs"], 1),
        "peer_transformers_bs1": round(tok_s["transformers"], 1),
        "ratio_bs1": round(best / tok_s["transformers"], 2),
        "cuda_graphs_speedup": round(tok_s["ours_cuda_graphs"] / tok_s["ours_eager"], 2),
        f"ours_eager_{CONCURRENT}_concurrent": round(tok_s[f"ours_eager_{CONCURRENT}"], 1),
        f"ours_cuda_graphs_{CONCURRENT}_concurrent": round(tok_s[f"ours_cuda_graphs_{CONCURRENT}"], 1),
        "copy_bandwidth_gbs": round(bandwidth / 1e9, 1), "bandwidth_bound_bs1": round(bound, 1),
        "fraction_of_bound_bs1": round(best / bound, 3),
        "graph_tokens_equal_eager": graph_tokens == eager_tokens}))


if __name__ == "__main__":
    main()
