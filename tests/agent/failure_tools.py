"""Tools for the failure tests that run `lmstack agent` (`--tools FILE:fn`): tools that misbehave, and tools whose
every execution shows."""

import time
from pathlib import Path

from lmstack.agent.tools import ToolContext, tool


@tool(timeout_s=1.0)
def hang(seconds: float) -> str:
    """Sleep far past the tool's 1 s timeout.

    Args:
        seconds: how long.
    """
    time.sleep(seconds)
    return "woke up"


@tool
def nap(seconds: float) -> str:
    """Sleep within the timeout (a window for the test to interrupt the run).

    Args:
        seconds: how long.
    """
    time.sleep(seconds)
    return f"slept {seconds:g} s"


@tool
def tally(note: str, context: ToolContext) -> str:
    """Append a line to tally.txt in the workspace. Not idempotent on purpose: a call made twice leaves two lines.

    Args:
        note: the line.
    """
    with open(Path(context.workspace) / "tally.txt", "a") as tally_file:
        tally_file.write(note + "\n")
    return f"tallied {note}"


@tool
def flood(chars: int) -> str:
    """Return far more text than a prompt or a database should hold: '<' for the first 60%, '>' for the rest.

    Args:
        chars: how many characters in all.
    """
    head = chars * 3 // 5
    return "<" * head + ">" * (chars - head)
