"""What the benchmarks' command lines share."""

from __future__ import annotations

import argparse


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """Refuse a count below 1 (`--repeats 0`) as argparse refuses a bad argument: one line naming the flag, before
    minutes of work fail on it."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
