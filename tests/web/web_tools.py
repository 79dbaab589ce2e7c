"""Tools for the dashboard tests' agent runs (loaded by path, also by the dashboard when it resumes a run)."""

from lmstack.agent.tools import tool


@tool
def echo(text: str) -> str:
    """Return the text unchanged (lets a test put any text into a tool output).

    Args:
        text: what to return
    """
    return text


@tool(requires_approval=True)
def guarded_echo(text: str) -> str:
    """Return the text unchanged, once a human approved the call.

    Args:
        text: what to return
    """
    return f"approved: {text}"
