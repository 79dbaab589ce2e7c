"""Hostile snippets in the sandbox: each is contained, and the result says what happened."""

import os
import socket
import threading
from pathlib import Path

import pytest

from lmstack.agent.sandbox import SandboxLimits, namespaces_available, run_python

pytestmark = pytest.mark.skipif(not namespaces_available(), reason="needs Linux namespaces (unshare)")
LIMITS = SandboxLimits(cpu_s=2, wall_s=5, memory_mb=256, max_processes=16, max_file_mb=1)


@pytest.fixture
def listener():
    """A real TCP server on the host's loopback: the sandbox must not reach it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    connected = []
    def accept():
        try:
            connected.append(server.accept())
        except OSError:
            pass
    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1], connected
    server.close()


def test_normal_code_runs_and_may_write_its_scratch_dir(tmp_path):
    result = run_python("open('out.txt', 'w').write('hi')\nprint(sum(range(10)))", LIMITS, tmp_path / "scratch")
    assert result.ok and result.stdout.strip() == "45" and result.isolation == "namespaces"
    assert (tmp_path / "scratch" / "out.txt").read_text() == "hi"


def test_network_connect_is_refused(listener):
    port, connected = listener
    result = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)", LIMITS)
    assert not result.ok and ("Network is unreachable" in result.stderr or "Connection refused" in result.stderr)
    assert connected == []


@pytest.mark.parametrize("where", ["/var/tmp", "home_of_test"])
def test_write_outside_scratch_is_refused(tmp_path, where):
    target = Path("/var/tmp" if where == "/var/tmp" else tmp_path) / f"escaped-{os.getpid()}.txt"
    try:
        result = run_python(f"open({str(target)!r}, 'w').write('x')", LIMITS)
        assert not result.ok
        assert any(s in result.stderr for s in ("Read-only file system", "No such file", "Permission denied"))
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_fork_bomb_is_contained():
    result = run_python("import os\nwhile True:\n    os.fork()", LIMITS)
    assert not result.ok and ("BlockingIOError" in result.stderr or "Resource temporarily unavailable" in result.stderr
                              or result.killed_by)
    assert result.wall_s < LIMITS.wall_s + 3


def test_memory_bomb_is_contained():
    result = run_python("x = bytearray(2 * 1024 ** 3)", LIMITS)
    assert not result.ok and "MemoryError" in result.stderr


def test_infinite_loop_is_killed_and_the_report_names_the_cpu_limit():
    # The CPU limit's SIGKILL was `unshare`'s to pass on, which it cannot: "exit code 1 ... unshare: sigprocmask
    # unblock failed", and the model never learnt that its code had run out of CPU time.
    result = run_python("while True:\n    pass", SandboxLimits(cpu_s=1, wall_s=5))
    assert (result.killed_by, result.isolation) == ("cpu_time", "namespaces") and result.wall_s < LIMITS.wall_s + 3
    assert result.report().startswith("[sandbox: killed: CPU time limit (1 s), ") and result.stderr == ""


def test_wall_clock_kill_for_a_sleeping_process():
    result = run_python("import time\ntime.sleep(60)", SandboxLimits(wall_s=1.5))
    assert result.killed_by == "wall_clock" and result.wall_s < 5


def test_parent_environment_secrets_are_not_visible(monkeypatch):
    monkeypatch.setenv("LMSTACK_TEST_SECRET", "hunter2")
    snippet = ("import os, glob\nprint(dict(os.environ))\n"
               "for path in glob.glob('/proc/*/environ'):\n"
               "    try: print(open(path, 'rb').read())\n"
               "    except OSError as err: print('denied', path)\n"
               f"print(open('/proc/{os.getpid()}/environ', 'rb').read())")
    result = run_python(snippet, LIMITS)
    assert "hunter2" not in result.stdout + result.stderr
    assert "LMSTACK_TEST_SECRET" not in result.stdout + result.stderr


def test_big_file_is_cut_at_the_size_limit(tmp_path):
    result = run_python("open('big', 'wb').write(b'x' * 5 * 1024 * 1024)", LIMITS, tmp_path / "s")
    assert not result.ok
    assert (tmp_path / "s" / "big").stat().st_size <= LIMITS.max_file_mb * 1024 * 1024
