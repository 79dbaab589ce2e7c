"""The CLI as users run it: a real `lmstack` subprocess, and the one-line error that bad input must give."""

from __future__ import annotations

import signal
import subprocess
import sys


def run_cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmstack.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess, command: str, alone: bool = True) -> str:
    """The line 'lmstack COMMAND: error: ...' of a refused command: exit code 2, no traceback, one such line (the
    only line on stderr when `alone`; a progress bar may come before it otherwise)."""
    assert done.returncode == 2, (done.stdout, done.stderr)
    prefix = f"lmstack {command}: error: "
    lines = [line for line in done.stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert not alone or done.stderr.strip() == lines[0], done.stderr
    return lines[0]


def default_sigint() -> None:
    """preexec_fn for a child that a test interrupts with SIGINT: a shell starts background jobs with SIGINT
    ignored, the child inherits that, and Python then installs no KeyboardInterrupt handler (a test suite run
    with `make test &` saw its Ctrl-C tests' runs go on to the end)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
