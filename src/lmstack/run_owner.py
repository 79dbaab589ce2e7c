"""The process executing a run, recorded with the run: (pid, host name) for an eval run, the pid for an agent run.

A run killed without a word (SIGKILL, the OOM killer, a power loss) cannot mark itself failed. Its recorded
process being gone is how `eval list`, reports and the dashboard tell it from a run still going, and how a
resume refuses a run that a live process is still writing. The host name keeps a pid recorded by another
machine sharing the database from being looked up here, where it names some other process or none.
"""

from __future__ import annotations

import os
import socket


def this_process() -> tuple[int, str]:
    return os.getpid(), socket.gethostname()


def process_state(pid: int | None, host: str | None) -> str:
    """'alive' or 'gone' for a process of this host; 'unknown' for another host's, or for a run recorded before
    processes were (pid None)."""
    if pid is None or host != socket.gethostname():
        return "unknown"
    return "alive" if pid_alive(pid) else "gone"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 sends nothing: it only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        return True
    return True
