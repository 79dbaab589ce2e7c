"""The ids users give runs (`--run-id`): an id is a path segment of the dashboard's URLs, and an agent run's names
its workspace folder, so only plain names are taken. `team/nightly` could not be opened in the dashboard, and an
agent run named `../..` put its file tools' workspace outside $LMSTACK_HOME."""

from __future__ import annotations

import re

from lmstack.errors import LmstackError

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str) -> str:
    if not RUN_ID.fullmatch(run_id):
        raise LmstackError(f"--run-id '{run_id}': use 1 to 128 letters, digits, '.', '_' or '-', beginning with a "
                           "letter or digit (the id is part of the dashboard's URLs, and an agent run's workspace "
                           "folder)")
    return run_id
