"""`lmstack train`."""

from __future__ import annotations

import argparse
import os

from lmstack.config import add_config_arguments

SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + signal number, as a shell reports it


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="pretrain a GPT on prepared shards (resumes automatically)",
        description="Pretrain a GPT from a config. Re-running the same command resumes from the run dir's last "
                    "checkpoint. Under `torchrun --nproc_per_node=N` the same command trains with DDP.")
    add_config_arguments(train)
    train.add_argument("--depth", type=int, metavar="N",
                       help="one-number model size: N layers of width 64*N (overridden by --config/--set)")
    train.add_argument("--resume", action="store_true",
                       help="require a checkpoint to resume from (without it, an existing one is resumed anyway)")
    train.set_defaults(func=run_train)


def load_train_config(args: argparse.Namespace):
    from lmstack.config import load_config
    from lmstack.model.config import config_from_depth
    from lmstack.train.config import TrainConfig

    base = {}
    if args.depth is not None:
        shape = config_from_depth(args.depth)
        base = {"model": {k: getattr(shape, k) for k in ("n_layer", "n_head", "n_embd")}}
    return load_config(TrainConfig, args.config, args.overrides, base=base)


def run_train(args: argparse.Namespace) -> int:
    from lmstack.train.loop import train

    cfg = load_train_config(args)
    result = train(cfg, resume="require" if args.resume else "auto")
    if _is_rank_zero():
        print(f"run dir: {result.run_dir}  (metrics.jsonl, loss.png, run.log)")
        print(f"last checkpoint: {result.last_checkpoint}")
        if result.best_checkpoint:
            print(f"best checkpoint: {result.best_checkpoint}")
    return SIGNAL_EXIT_CODES.get(result.interrupted_by, 0)


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"
