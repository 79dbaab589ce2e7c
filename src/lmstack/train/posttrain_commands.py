"""`lmstack sft`, `lmstack dpo`, `lmstack grpo` and `lmstack data toolcalls`."""

from __future__ import annotations

import argparse
import os

from lmstack.config import ConfigError, add_config_arguments
from lmstack.train.commands import SIGNAL_EXIT_CODES


def register(subparsers: argparse._SubParsersAction) -> None:
    sft = subparsers.add_parser(
        "sft", help="supervised fine-tuning on chat JSONL (full or --lora-rank N)",
        description="Fine-tune a checkpoint on OpenAI-format chat JSONL, training on assistant turns only. "
                    "Writes <run dir>/final, a plain checkpoint dir (LoRA merged). Re-run to resume.")
    _common(sft, data_help="chat JSONL: one {\"messages\": [...], \"tools\": [...]} per line")
    sft.set_defaults(func=run_sft)

    dpo = subparsers.add_parser(
        "dpo", help="Direct Preference Optimization on (prompt, chosen, rejected) JSONL",
        description="DPO against the frozen starting model (with LoRA: the adapters switched off). "
                    "Logs reward margins and accuracy; writes <run dir>/final.")
    _common(dpo, data_help="JSONL: {\"prompt\": str|messages, \"chosen\": str, \"rejected\": str} per line")
    dpo.add_argument("--beta", type=float, help="DPO temperature (default 0.1)")
    dpo.set_defaults(func=run_dpo)

    grpo = subparsers.add_parser(
        "grpo", help="reinforcement learning with verifiable rewards (GRPO) on the synthetic tool-use task",
        description="GRPO: groups of samples per prompt from the engine, rewards from the tool-use checker, "
                    "group-normalised advantages, optional KL to the reference; writes <run dir>/final.")
    _common(grpo, data_help="synthetic tool-use JSONL (from `lmstack data toolcalls`)",
            val_help="held-out file of the same format, scored greedily at each eval (default: none, and a warning)")
    grpo.add_argument("--group-size", type=int, help="samples per prompt (default 8)")
    grpo.add_argument("--kl-coef", type=float, help="KL penalty to the reference (default 0.02; 0 = none)")
    grpo.set_defaults(func=run_grpo)

    data = subparsers.add_parser("data", help="generate datasets")
    actions = data.add_subparsers(dest="action", metavar="ACTION", required=True)
    toolcalls = actions.add_parser(
        "toolcalls", help="synthetic tool-use conversations (calculator, key-value store, unit conversion)",
        description="Write OUT/train.jsonl and OUT/test.jsonl (held out: no question in both). Each line has "
                    "messages, tools, and `expected` (calls and final answer) for checkers.")
    toolcalls.add_argument("--out", required=True, metavar="DIR", help="output directory")
    toolcalls.add_argument("--train", type=int, default=2000, metavar="N", help="train conversations (default 2000)")
    toolcalls.add_argument("--test", type=int, default=200, metavar="N", help="held-out conversations (default 200)")
    toolcalls.add_argument("--seed", type=int, default=0)
    toolcalls.set_defaults(func=run_toolcalls)


def _common(parser: argparse.ArgumentParser, data_help: str,
            val_help: str = "held-out file of the same format (default: a slice of --data)") -> None:
    parser.add_argument("--init-from", required=True, metavar="DIR", help="checkpoint dir to start from")
    parser.add_argument("--data", metavar="FILE", help=data_help)
    parser.add_argument("--val-data", metavar="FILE", help=val_help)
    parser.add_argument("--run-dir", metavar="DIR", help="where checkpoints, metrics and final/ go (default runs/<name>)")
    parser.add_argument("--steps", type=int, help="optimizer steps")
    parser.add_argument("--lora-rank", type=int, metavar="N",
                        help="train LoRA adapters of rank N >= 1 instead of all weights (default: all weights)")
    parser.add_argument("--lora-alpha", type=float, help="LoRA scale numerator (default 2 * rank)")
    parser.add_argument("--lora-dropout", type=float, help="dropout on the adapters' input (default 0)")
    parser.add_argument("--lora-targets", metavar="LIST", help="comma list of qkv,proj,up,down,lm_head (default qkv,proj,up,down)")
    parser.add_argument("--resume", action="store_true", help="require a checkpoint to resume from")
    add_config_arguments(parser)


def _settings(args: argparse.Namespace) -> dict:
    # The config's lora_rank=0 (its default) means all weights; asked for on the flag it is a mistake, as PEFT's r=0 is.
    if args.lora_rank is not None and args.lora_rank < 1:
        raise ConfigError(f"--lora-rank {args.lora_rank}: a LoRA rank must be at least 1 (e.g. --lora-rank 8); "
                          "omit --lora-rank to fine-tune all weights")
    return {"train_file": args.data, "val_file": args.val_data, "run_dir": args.run_dir, "max_steps": args.steps,
            "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha, "lora_dropout": args.lora_dropout,
            "lora_targets": args.lora_targets.split(",") if args.lora_targets else None}


def _run(args: argparse.Namespace, cls: type, train, **extra) -> int:
    from lmstack.config import format_config
    from lmstack.train.sft import load_finetune_config

    cfg = load_finetune_config(cls, args.init_from, args.config, args.overrides, **_settings(args), **extra)
    rank_zero = os.environ.get("RANK", "0") == "0"
    if rank_zero:
        print(format_config(cfg))
    result = train(cfg, resume="require" if args.resume else "auto")
    if rank_zero:
        print(f"run dir: {result.train.run_dir}  (metrics.jsonl, plots, run.log)")
        print(f"final model: {result.final or 'not written (interrupted; re-run the same command to resume)'}")
    return SIGNAL_EXIT_CODES.get(result.train.interrupted_by, 0)


def run_sft(args: argparse.Namespace) -> int:
    from lmstack.train.sft import SFTConfig, sft

    return _run(args, SFTConfig, sft)


def run_dpo(args: argparse.Namespace) -> int:
    from lmstack.train.dpo import DPOConfig, dpo

    return _run(args, DPOConfig, dpo, beta=args.beta)


def run_grpo(args: argparse.Namespace) -> int:
    from lmstack.train.grpo import GRPOConfig, grpo

    return _run(args, GRPOConfig, grpo, group_size=args.group_size, kl_coef=args.kl_coef)


def run_toolcalls(args: argparse.Namespace) -> int:
    from lmstack.data.toolcalls import write_splits

    paths = write_splits(args.out, args.train, args.test, args.seed)
    print(f"wrote {paths['train']} ({args.train} conversations) and {paths['test']} ({args.test}, held out)")
    return 0
