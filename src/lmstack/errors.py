"""The one base class for errors a user can cause (bad input, missing file, wrong setting).

The CLI prints these as one line naming the input and the fix, with no traceback; everything else
is a bug and keeps its traceback.
"""


class LmstackError(ValueError):
    """A user-caused problem; the message names the input and says how to fix it."""


def quoted_few(names: list[str], shown: int = 3) -> str:
    """The first `shown` names quoted, then how many more: for a message about a list that may be long."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(f"'{name}'" for name in names[:shown]) + more
