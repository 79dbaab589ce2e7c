"""`lmstack sample`, `lmstack inspect`: generate from and look inside a checkpoint.

(`lmstack chat` is registered in serve/commands.py, which adds `--url`; its loop is infer/chat.py.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_sampling_arguments(p: argparse.ArgumentParser, max_tokens_help: str) -> None:
    p.add_argument("--max-tokens", type=int, default=None, help=max_tokens_help)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)


SAMPLE_TOKENS = 200  # `lmstack sample`'s default length

# EngineConfig's fields, spelled out so that `--help` does not import torch (tests/infer checks they match).
ENGINE_SETTINGS = ("block_size, num_blocks, kv_memory_mb, max_num_seqs, max_batched_tokens, dtype, device, compile, "
                   "enable_prefix_caching, cuda_graphs, quantization, pack_weights")


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    from lmstack.config import add_config_arguments

    add_config_arguments(p)
    p.epilog = f"engine settings (--set KEY=VALUE or a TOML file): {ENGINE_SETTINGS}. quantization=int8: " \
               "weight-only int8 Linears, half the weights' memory, faster than bf16 at 2+ threads; pack_weights " \
               "(CPU bf16, on by default): prepacked Linear weights; compile: compiled decode steps (AOTInductor on " \
               "CPU, torch.compile on GPUs), built with the engine (a minute or two)"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="generate text from a checkpoint dir (streams when n = 1)")
    p.add_argument("ckpt", help="lmstack checkpoint dir")
    p.add_argument("--prompt", default="", help="text to continue (default: start from bos)")
    p.add_argument("-n", type=int, default=1, help="number of samples")
    add_sampling_arguments(p, max_tokens_help=f"tokens to generate per sample (default {SAMPLE_TOKENS}, or the rest "
                                              "of the model's context when that is less)")
    add_engine_arguments(p)
    p.set_defaults(func=run_sample)

    p = subparsers.add_parser("inspect",
                              help="attention maps, head entropy, logit lens and token logprobs for a prompt")
    p.add_argument("ckpt", help="lmstack checkpoint dir")
    p.add_argument("--prompt", required=True, help="text to inspect")
    p.add_argument("--out", default="inspect", help="directory for the PNGs (default: ./inspect)")
    p.add_argument("--top", type=int, default=5, help="tokens shown per layer by the logit lens")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run_inspect)


def build_engine(args: argparse.Namespace):
    from lmstack.config import load_config
    from lmstack.infer.engine import Engine, EngineConfig
    from lmstack.model.checkpoint import no_tokenizer

    engine = Engine.from_checkpoint(args.ckpt, load_config(EngineConfig, args.config, args.overrides))
    if engine.tokenizer is None:  # sample and chat print text
        raise no_tokenizer(args.ckpt)
    return engine


def sampling_params(args: argparse.Namespace, max_tokens: int | None, **extra):
    from lmstack.infer.params import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, seed=args.seed, **extra).validate()


def run_sample(args: argparse.Namespace) -> int:
    engine = build_engine(args)
    prompt = engine.prompt_ids(args.prompt)
    # A limit the user set is kept (beyond the context it is an error); the default fits what the context leaves.
    # At least 1, so that a prompt that fills the context gets the engine's error saying so.
    max_tokens = args.max_tokens
    if max_tokens is None:
        max_tokens = max(1, min(SAMPLE_TOKENS, engine.room_for(len(prompt))))
    params = sampling_params(args, max_tokens, n=args.n)
    if args.n == 1:
        engine.add_request(prompt, params)  # first: a request it refuses must leave no echoed prompt on stdout
        print(args.prompt, end="", flush=True)
        while engine.has_unfinished():
            for event in engine.step():
                print(event.text, end="", flush=True)
        print()
        return 0
    for output in engine.generate([prompt], params)[0].outputs:
        print(f"--- sample {output.index} ({output.finish_reason})")
        print(args.prompt + output.text)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from lmstack.atomic import check_output_dir
    from lmstack.device import detect_device
    from lmstack.errors import LmstackError
    from lmstack.infer.inspect import inspect_prompt, plot_attention, plot_token_scores
    from lmstack.model.checkpoint import load_model_dir
    from lmstack.tokenizer import TokenizerError

    if args.top < 1:
        raise LmstackError(f"--top {args.top}: show at least 1 token per layer (default 5)")
    check_output_dir(args.out)  # before the work, not after it
    info = detect_device(args.device, cpu_hint="--device cpu")
    model, tokenizer, _ = load_model_dir(args.ckpt, device=info.torch_device)
    if tokenizer is None:
        raise TokenizerError(f"'{args.ckpt}' has no tokenizer.json; inspect needs one to encode --prompt")
    ids = ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) + tokenizer.encode(args.prompt)
    if len(ids) > model.cfg.block_size:
        from lmstack.infer.params import SamplingError

        raise SamplingError(f"--prompt is {len(ids)} tokens, longer than the model's context of {model.cfg.block_size}")
    result = inspect_prompt(model, ids, top=args.top)
    labels = [tokenizer.token_str(t) for t in ids]
    print_report(result, labels, tokenizer)
    paths = plot_attention(result, labels, args.out) + [plot_token_scores(result, labels, args.out)]
    # Path(...) drops the slash a user may end --out with, which printed as "inspect//"
    print(f"\nwrote {len(paths)} PNGs to {Path(args.out)}/ (attention_layerNN.png, token_scores.png)")
    return 0


def print_report(result, labels: list[str], tokenizer, out=None) -> None:
    out = out or sys.stdout
    print("token                 logprob   next-token entropy", file=out)
    for label, logprob, entropy in zip(labels, result.token_logprobs, result.token_entropy):
        shown = "      -" if logprob is None else f"{logprob:7.2f}"
        print(f"{label!r:20.20}  {shown}   {entropy:6.2f}", file=out)
    print("\nattention entropy per head (nats; 0 = one key, ln T = uniform)", file=out)
    for layer, row in enumerate(result.head_entropy.tolist()):
        print(f"layer {layer:2d}: " + " ".join(f"{h:5.2f}" for h in row), file=out)
    print("\nlogit lens at the last position (top tokens after each layer)", file=out)
    for layer, top in enumerate(result.lens_top):
        print(f"layer {layer:2d}: " + "  ".join(f"{tokenizer.token_str(t)!r} {p:.2f}" for t, p in top), file=out)
    print("\nchecks: " + ("no broken attention pattern found" if not result.warnings else ""), file=out)
    for warning in result.warnings:
        print(f"  WARNING {warning}", file=out)
