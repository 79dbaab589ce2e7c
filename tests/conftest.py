"""Shared test set-up: every test session gets its own LMSTACK_HOME, so no test touches ~/.lmstack."""

import os
import shutil
import socket
import subprocess
import tempfile

import pytest

_home = tempfile.mkdtemp(prefix="lmstack-test-home-")
os.environ.setdefault("LMSTACK_HOME", _home)
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_sessionfinish(session, exitstatus):
    """The session's home goes with it: every `make test` left one in the temp dir."""
    shutil.rmtree(_home, ignore_errors=True)


@pytest.fixture
def cli(capsys):
    """`lmstack ARGS` run in this process, as a CompletedProcess like cli_testing.run_cli, for the tests of a
    command's own checks that make many calls: a new interpreter costs over a second each (torch's import), which
    made `make test` near its 10 minutes. What only a real process shows (signals, a second process, a crash's exit
    code) stays with run_cli."""
    from lmstack.cli import main

    def run(*args, timeout: float | None = None) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, captured.out, captured.err)

    return run


@pytest.fixture(scope="module")
def taken_port():
    """A 127.0.0.1 port that is listened on: a server command refused in-process must fail before it would bind one,
    and one whose check let a case through fails to bind it rather than serving in the test process."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]
