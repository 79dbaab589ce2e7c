"""`lmstack`: one entry point; each subcommand calls one function of a layer.

Each layer keeps its subcommands in its own `commands.py` with a `register(subparsers)` function;
this file only lists those modules. Importing is lazy per module so `lmstack --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import sys

from lmstack.errors import LmstackError

# Order = order in `lmstack --help`. Each module has `register(subparsers)`.
COMMAND_MODULES: list[str] = [
    "lmstack.data.commands",  # prepare, tokenizer train|encode|info
    "lmstack.model.commands",  # import, export, info
    "lmstack.train.commands",  # train
    "lmstack.quickstart",  # quickstart (= make demo)
    "lmstack.train.posttrain_commands",  # sft, dpo, grpo, data toolcalls
    "lmstack.infer.commands",  # sample, inspect
    "lmstack.serve.commands",  # serve, chat (local or --url)
    "lmstack.agent.commands",  # agent run|resume|approve|list|trace
    "lmstack.evals.commands",  # eval run|compare|report|list
    "lmstack.web.commands",  # ui (the dashboard without a model)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmstack", description="The whole LLM stack: pretrain, fine-tune, serve, agents, evals.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


# Errors a user can cause: printed as one line, exit code 2, no traceback.
USER_ERRORS = (LmstackError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        result = args.func(args)
        sys.stdout.flush()  # output still buffered would meet a closed pipe at exit, outside this try
    except BrokenPipeError:
        if not reader_gone(sys.stdout):
            raise  # another pipe or socket broke: a real error, not the reader of our output leaving
        return stdout_closed()
    except USER_ERRORS as err:
        print(f"lmstack {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lmstack {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def reader_gone(stream) -> bool:
    """Whether `stream` is a pipe whose reading end has been closed (poll reports an error on the writing end)."""
    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll here, or no file descriptor behind the stream
        return False


def stdout_closed() -> int:
    """The reader of our output went away (`lmstack agent list | head -3`): exit quietly, as in the Python docs'
    "Note on SIGPIPE". Python flushes stdout again at exit, so it is pointed at /dev/null to fail no more."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 1  # what Python itself exits with on EPIPE


if __name__ == "__main__":
    sys.exit(main())
