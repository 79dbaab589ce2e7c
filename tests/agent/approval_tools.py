"""The built-in write_file, but requiring a human's approval (for the CLI approve test)."""

from lmstack.agent.builtin_tools import write_file as builtin_write_file
from lmstack.agent.tools import make_tool

write_file = make_tool(builtin_write_file.function, side_effecting=True, requires_approval=True,
                       actions=builtin_write_file.actions)
