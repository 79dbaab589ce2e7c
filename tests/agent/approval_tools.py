"""Tools requiring a human's approval: the built-in write_file (for the CLI approve test), and append_line, whose
every execution leaves a line behind (for the tests that a run's approved call runs once)."""

from lmstack.agent.builtin_tools import write_file as builtin_write_file
from lmstack.agent.tools import ToolContext, make_tool, tool

write_file = make_tool(builtin_write_file.function, side_effecting=True, requires_approval=True,
                       actions=builtin_write_file.actions)


@tool(requires_approval=True)
def append_line(text: str, context: ToolContext) -> str:
    """Append a line to ledger.txt in the workspace, once a human approved the call.

    Args:
        text: the line
    """
    with open(context.workspace / "ledger.txt", "a") as ledger:
        ledger.write(f"{context.call_key} {text}\n")
    return f"appended: {text}"
