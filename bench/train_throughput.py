r"""Training throughput: lmstack's GPT + optimizer vs transformers' GPT2LMHeadModel, same config, data and optimizer.

Both sides run the same training step (forward, loss, backward, clip to 1.0 with foreach, the same fused
AdamW, zero_grad(set_to_none)) on the same random token batches with the same thread count, alternating
in rounds so that a busy machine slows both alike. Each side's figure is the median over rounds; the
ratio is the median of the rounds' ratios. Both sides run eager by default, or both through
torch.compile with --compile: never one of each. The peer runs its default attention (`sdpa` in
transformers 5.x; reported as peer_attention) and GPT-2's default activation `gelu_new`, the same tanh
GELU as ours. `--dtype auto` autocasts both sides as `lmstack train` does: bf16 on GPUs, fp32 on CPU; MFU
is against the peak of that dtype. The last line printed is a JSON object: {ours, peer, ratio, ...}.

    .venv/bin/python bench/train_throughput.py [--rounds 7] [--steps 3] [--compile] [--threads N] [--device cpu]
    # the issue's GPU target, GPT-2 124M at T=1024 in bf16:
    .venv/bin/python bench/train_throughput.py --device cuda --compile --layers 12 --width 768 --vocab 50304 \
        --seq 1024 --batch 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from _args import require_positive
from lmstack.device import autocast_context, autocast_dtype, detect_device, peak_flops
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.train.config import TrainConfig
from lmstack.train.optim import build_optimizers

LR, BETAS, WEIGHT_DECAY = 1e-3, (0.9, 0.95), 0.1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=7, help="alternating measurement rounds (median is reported)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per round")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for both sides (default: torch's)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--dtype", default="auto",
                        help="autocast dtype of both sides: auto (bf16 on GPUs, fp32 on CPU) | float32 | bfloat16 "
                             "| float16")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="torch.compile both models (needs a C++ compiler on CPU; minutes to compile)")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile mode of both models with --compile: default | reduce-overhead (CUDA "
                             "graphs: fewer kernel launches) | max-autotune-no-cudagraphs")
    parser.add_argument("--profile", action="store_true",
                        help="after the rounds, profile our steps once: the kernels taking the most device time, "
                             "and the share of the wall time the device was busy")
    args = parser.parse_args()
    require_positive(parser, args, "rounds", "steps", "layers", "width", "vocab", "batch", "seq")
    return args


def ours(cfg: ModelConfig, device: torch.device, compile_mode: str | None, autocast):
    model = build_model(cfg, device, seed=0)
    optimizers = build_optimizers(model, TrainConfig(model=cfg, lr=LR, beta1=BETAS[0], beta2=BETAS[1],
                                                     weight_decay=WEIGHT_DECAY, seq_len=cfg.block_size), device)
    forward = torch.compile(model, mode=compile_mode) if compile_mode else model

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with autocast():
            _, loss = forward(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return model, step


def peer(cfg: ModelConfig, device: torch.device, compile_mode: str | None, autocast):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        activation_function="gelu_new", layer_norm_epsilon=cfg.norm_eps)
    model = GPT2LMHeadModel(hf_cfg).to(device)
    model.train()
    # transformers' own split: no decay on biases and LayerNorm weights (as its Trainer does), torch's AdamW.
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    # The same optimizer as ours: torch's AdamW with the fused kernel where lmstack uses it (CPU and CUDA).
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=BETAS,
                                  fused=device.type in ("cpu", "cuda"))
    forward = torch.compile(model, mode=compile_mode) if compile_mode else model

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        with autocast():
            loss = forward(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return model, step


def tokens_per_second(step, batches, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for x, y in batches:
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sum(x.numel() for x, _ in batches) / (time.perf_counter() - start)


def profile(step, batches, device: torch.device) -> None:
    """Print where our training steps spend their time: the top kernels (device time on a GPU, CPU time on a CPU)
    and, on a GPU, busy time over wall time (what launch gaps and host syncs leave idle)."""
    from torch.profiler import ProfilerActivity
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        rate = tokens_per_second(step, batches, device)
    wall = sum(x.numel() for x, _ in batches) / rate
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=key, row_limit=25, max_name_column_width=70))
    if device.type == "cuda":
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.time_range.elapsed_us() for e in kernels) / 1e6
        print(f"device busy {busy:.3f} s of {wall:.3f} s wall ({busy / wall:.0%})")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        info = detect_device(args.device)
        amp_dtype = autocast_dtype(info, args.dtype)
    except ValueError as err:  # lmstack's DeviceError: names the setting and what to set instead
        raise SystemExit(f"train_throughput.py: error: {err}")
    device = info.torch_device
    cfg = ModelConfig(arch="gpt2", vocab_size=args.vocab, block_size=args.seq, n_layer=args.layers,
                      n_head=max(1, args.width // 64), n_embd=args.width)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=generator)) for _ in range(args.steps)]
    batches = [(b[:, :-1].contiguous().to(device), b[:, 1:].contiguous().to(device)) for b in batches]
    autocast = autocast_context(device.type, amp_dtype)
    compile_mode = args.compile_mode if args.compile else None
    our_model, our_step = ours(cfg, device, compile_mode, autocast)
    peer_model, peer_step = peer(cfg, device, compile_mode, autocast)
    for step in (our_step, peer_step):  # warm-up: allocator, kernels, compilation
        tokens_per_second(step, batches[:2], device)
    our_rates, peer_rates = [], []
    for round_index in range(args.rounds):
        our_rates.append(tokens_per_second(our_step, batches, device))
        peer_rates.append(tokens_per_second(peer_step, batches, device))
        print(f"round {round_index + 1}: lmstack {our_rates[-1]:,.0f} tok/s, transformers {peer_rates[-1]:,.0f} tok/s")
    if args.profile:
        profile(our_step, batches, device)
    ours_median, peer_median = statistics.median(our_rates), statistics.median(peer_rates)
    flops_per_token = our_model.flops_per_token(args.seq)
    peak = peak_flops(info, amp_dtype)
    print(json.dumps({
        "metric": "train tokens/s", "device": info.name, "threads": torch.get_num_threads(),
        "dtype": str(amp_dtype or torch.float32).removeprefix("torch."),
        "ours": round(ours_median), "peer": round(peer_median),
        # The headline ratio is the median of the rounds' ratios: each round runs both sides back to back, so
        # its ratio survives the load of a shared machine changing between rounds; the medians' ratio does not.
        "ratio": round(statistics.median(o / p for o, p in zip(our_rates, peer_rates)), 3),
        "ratio_of_medians": round(ours_median / peer_median, 3),
        "ours_mfu": round(flops_per_token * ours_median / peak, 4), "peer_mfu": round(flops_per_token * peer_median / peak, 4),
        "peer_name": "transformers GPT2LMHeadModel", "peer_attention": peer_model.config._attn_implementation,
        "config": vars(args),
        "rounds": {"ours": [round(r) for r in our_rates], "peer": [round(r) for r in peer_rates]},
    }))


if __name__ == "__main__":
    main()
