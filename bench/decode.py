"""Decode speed of our engine against `transformers` generate, same weights, same run, CPU.

Figures (medians of a few runs, greedy, fixed token counts):
  - bs=1 decode tok/s for a small llama (depth 4) and for GPT-2-124M-sized random weights;
  - throughput with 32 concurrent requests, as a multiple of our bs=1 figure;
  - the distance to two bounds: the nominal memory-bandwidth bound (the bytes a decode step reads, at
    MEMORY_BANDWIDTH_GBS: every weight but the embedding tables, of which it reads one row) and the
    measured one: every weight matmul alone ("weights_only"), same run;
  - the same engine with int8 weights (EngineConfig.quantization="int8"): bs=1 tok/s, its own two bounds
    (int8 linears), the share of its --tokens greedy tokens equal to the unquantized engine's, and
    the share of steps with the same argmax when both are fed the unquantized engine's tokens.
Ours and the peers take turns within each repeat, so load from other jobs hits them alike.
The peer is the faster of transformers in float32 and in bfloat16. The last line is JSON.

    .venv/bin/python bench/decode.py [--tokens 64] [--repeats 3] [--threads 1] [--compile] [--small-only] [--dtype auto]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from _args import require_positive
from lmstack.device import detect_device, inference_dtype
from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingParams
from lmstack.infer.quantize import Int8Linear
from lmstack.model.checkpoint import save_model_dir
from lmstack.model.config import ModelConfig, config_from_depth
from lmstack.model.convert_hf import export_hf
from lmstack.model.gpt import build_model

MEMORY_BANDWIDTH_GBS = 35.0  # measured read bandwidth of the benchmark machine (see the issue)
PROMPT = list(range(1, 17))


def interleaved_medians(runs: dict[str, callable], repeats: int) -> dict[str, float]:
    """Seconds per call of each run, median of `repeats`; the runs take turns, so a load spike from other
    jobs on the machine hits all of them rather than one."""
    for run in runs.values():
        run()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def ours_run(engine: Engine, batch: int, tokens: int):
    prompts = [[(p + i) % 1000 + 1 for p in PROMPT] for i in range(batch)]
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    return lambda: engine.generate(prompts, params)


def hf_run(hf_dir: Path, dtype: torch.dtype, tokens: int, device: str = "cpu"):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(device).eval()
    prompt = torch.tensor([PROMPT], device=device)

    def run():
        with torch.inference_mode():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=tokens,
                                 min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        out.tolist()  # on a GPU: waits for the last step, as our engine's token ids do
    return run


def weights_only_run(model: torch.nn.Module, tokens: int):
    """Every linear layer on one row, once per token, as the engine runs them (prepacked bf16, or int8): what a
    decoder pays with these kernels just to read its weights, in this run (the practical floor, unlike the
    nominal bound)."""
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, Int8Linear))]
    dtype = model.tok_emb.weight.dtype
    rows = {m.in_features: torch.zeros(1, m.in_features, dtype=dtype) for m in layers}

    def run():
        with torch.inference_mode():
            for _ in range(tokens):
                for layer in layers:
                    layer(rows[layer.in_features])
    return run


def decode_read_bytes(model: torch.nn.Module) -> int:
    """Bytes of the weights one decode step reads: all but the embedding tables, of which it reads one row
    (a tied lm_head's table is read whole, so it counts)."""
    embeddings = {m.weight.data_ptr() for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    embeddings.discard(model.lm_head.weight.data_ptr())
    unique = {t.data_ptr(): t for t in model.state_dict().values()}
    return sum(t.numel() * t.element_size() for ptr, t in unique.items() if ptr not in embeddings)


def greedy_agreement(reference: list[int], candidate: list[int]) -> float:
    return sum(a == b for a, b in zip(reference, candidate)) / len(reference)


def teacher_forced_top1(reference: torch.nn.Module, candidate: torch.nn.Module, prompt: list[int],
                        tokens: list[int]) -> float:
    """Share of the steps at which both models' argmax agree, both fed the reference's tokens: unlike free-running
    greedy decoding, one flip (a near-tie, common in random weights' flat logits) does not change all later steps."""
    ids = torch.tensor([prompt + tokens[:-1]])
    with torch.inference_mode():
        wanted = [model(ids)[0][0, len(prompt) - 1:].argmax(-1) for model in (reference, candidate)]
    return (wanted[0] == wanted[1]).float().mean().item()


def bench_model(name: str, cfg: ModelConfig, tokens: int, repeats: int, concurrent: int | None, compile: bool,
                dtype: str) -> dict:
    model = build_model(cfg, seed=0)
    weights_dtype = inference_dtype(detect_device("cpu"), dtype)
    engine_config = EngineConfig(block_size=16, max_num_seqs=64, kv_memory_mb=1024, compile=compile)
    t0 = time.perf_counter()
    engine = Engine(model.to(weights_dtype), None, engine_config)  # with compile: compiles the decode steps
    ours_run(engine, 1, 4)()
    ours_run(engine, 2, 4)()
    warmup_s = time.perf_counter() - t0
    # A copy: quantization replaces the Linear layers in place, and `model` is exported for the peers below.
    int8_engine = Engine(copy.deepcopy(model), None, dataclasses.replace(engine_config, quantization="int8"))
    with tempfile.TemporaryDirectory() as tmp:
        save_model_dir(Path(tmp) / "ours", model, None)
        export_hf(Path(tmp) / "ours", Path(tmp) / "hf", dtype="float32")
        runs = {"ours": ours_run(engine, 1, tokens), "weights_only": weights_only_run(model, tokens),
                "ours_int8": ours_run(int8_engine, 1, tokens),
                "weights_only_int8": weights_only_run(int8_engine.model, tokens)}
        if concurrent:
            runs["ours_concurrent"] = ours_run(engine, concurrent, tokens)
        runs.update({f"transformers_{str(d).removeprefix('torch.')}": hf_run(Path(tmp) / "hf", d, tokens)
                     for d in (torch.float32, torch.bfloat16)})
        tok_s = {k: tokens / v for k, v in interleaved_medians(runs, repeats).items()}
        greedy = runs["ours"]()[0]
        agreement = greedy_agreement(greedy.token_ids, runs["ours_int8"]()[0].token_ids)
        forced = teacher_forced_top1(model, int8_engine.model, greedy.prompt_token_ids, greedy.token_ids)
    peer = {k.removeprefix("transformers_"): v for k, v in tok_s.items() if k.startswith("transformers_")}
    ours, best_peer = tok_s["ours"], max(peer.values())
    result = {"model": name, "params_m": round(model.num_params() / 1e6, 1), "dtype": str(weights_dtype),
              "ours_bs1_tok_s": round(ours, 1), "transformers_bs1_tok_s": {k: round(v, 1) for k, v in peer.items()},
              "ratio_bs1": round(ours / best_peer, 2),
              "ratio_bs1_vs_transformers_float32": round(ours / peer["float32"], 2),
              "compile": compile, "warmup_s": round(warmup_s, 1)}
    result["bandwidth_bound_tok_s"] = round(MEMORY_BANDWIDTH_GBS * 1e9 / decode_read_bytes(model), 1)
    result["fraction_of_bound"] = round(ours / result["bandwidth_bound_tok_s"], 2)
    result["weights_only_tok_s"] = round(tok_s["weights_only"], 1)
    result["fraction_of_weights_only"] = round(ours / tok_s["weights_only"], 2)
    int8, int8_bound = tok_s["ours_int8"], MEMORY_BANDWIDTH_GBS * 1e9 / decode_read_bytes(int8_engine.model)
    result.update({"int8_bs1_tok_s": round(int8, 1), "int8_ratio_bs1": round(int8 / best_peer, 2),
                   "int8_speedup_vs_ours": round(int8 / ours, 2), "int8_bandwidth_bound_tok_s": round(int8_bound, 1),
                   "int8_fraction_of_bound": round(int8 / int8_bound, 2),
                   "int8_weights_only_tok_s": round(tok_s["weights_only_int8"], 1),
                   "int8_fraction_of_weights_only": round(int8 / tok_s["weights_only_int8"], 2),
                   "int8_greedy_agreement": round(agreement, 3), "int8_teacher_forced_top1": round(forced, 3)})
    if concurrent:
        many = concurrent * tok_s["ours_concurrent"]
        result[f"ours_{concurrent}_concurrent_tok_s"] = round(many, 1)
        result[f"ratio_{concurrent}_concurrent_vs_bs1"] = round(many / ours, 2)
    print(json.dumps(result))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="time the engine with torch.compile'd decode steps")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both engines (on a busy machine, 1 avoids OpenMP spin-waits)")
    parser.add_argument("--small-only", action="store_true", help="skip the 124M model")
    parser.add_argument("--dtype", default="auto", help="our engine's dtype: auto | float32 | bfloat16")
    args = parser.parse_args()
    require_positive(parser, args, "tokens", "repeats")
    try:
        inference_dtype(detect_device("cpu"), args.dtype)
    except ValueError as err:
        parser.error(f"--dtype: {err}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    small = bench_model("llama-depth4", config_from_depth(4, vocab_size=8192, block_size=512),
                        args.tokens, args.repeats, concurrent=32, compile=args.compile, dtype=args.dtype)
    if args.small_only:
        return
    gpt2 = ModelConfig(arch="gpt2", vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    medium = bench_model("gpt2-124M", gpt2, args.tokens, args.repeats, concurrent=32, compile=args.compile,
                         dtype=args.dtype)
    print(json.dumps({
        "threads": torch.get_num_threads(), "compile": args.compile, "dtype": small["dtype"],
        "small_bs1_tok_s": small["ours_bs1_tok_s"], "small_peer_tok_s": max(small["transformers_bs1_tok_s"].values()),
        "small_ratio": small["ratio_bs1"], "small_fraction_of_weights_only": small["fraction_of_weights_only"],
        "gpt2_124m_bs1_tok_s": medium["ours_bs1_tok_s"],
        "gpt2_124m_peer_tok_s": max(medium["transformers_bs1_tok_s"].values()), "gpt2_124m_ratio": medium["ratio_bs1"],
        "gpt2_124m_fraction_of_bandwidth_bound": medium["fraction_of_bound"],
        "gpt2_124m_weights_only_tok_s": medium["weights_only_tok_s"],
        "gpt2_124m_fraction_of_weights_only": medium["fraction_of_weights_only"],
        "small_32_concurrent_vs_bs1": small["ratio_32_concurrent_vs_bs1"],
        "gpt2_124m_32_concurrent_vs_bs1": medium["ratio_32_concurrent_vs_bs1"],
        "small_int8_bs1_tok_s": small["int8_bs1_tok_s"], "small_int8_ratio": small["int8_ratio_bs1"],
        "small_int8_greedy_agreement": small["int8_greedy_agreement"],
        "small_int8_teacher_forced_top1": small["int8_teacher_forced_top1"],
        "gpt2_124m_int8_bs1_tok_s": medium["int8_bs1_tok_s"], "gpt2_124m_int8_ratio": medium["int8_ratio_bs1"],
        "gpt2_124m_int8_speedup_vs_ours": medium["int8_speedup_vs_ours"],
        "gpt2_124m_int8_fraction_of_int8_bound": medium["int8_fraction_of_bound"],
        "gpt2_124m_int8_fraction_of_int8_weights_only": medium["int8_fraction_of_weights_only"],
        "gpt2_124m_int8_greedy_agreement": medium["int8_greedy_agreement"],
        "gpt2_124m_int8_teacher_forced_top1": medium["int8_teacher_forced_top1"]}))


if __name__ == "__main__":
    main()
