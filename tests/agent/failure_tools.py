"""Tools that misbehave, for the failure tests that run `lmstack agent run` as a subprocess (`--tools FILE:fn`)."""

import time

from lmstack.agent.tools import tool


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
