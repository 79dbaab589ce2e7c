"""The python tool's calls of one turn run side by side, and a flood of output stays bounded in the parent."""

import threading
import time

from lmstack.agent.builtin_tools import python
from lmstack.agent.sandbox import SandboxLimits, run_python


def test_concurrent_python_calls_each_get_their_own_scratch_folder():
    # Each program sleeps after writing its file, so both are running at once; with one shared
    # scratch folder the second __main__.py would replace the first and both would print the same.
    codes = {i: f"import time\nopen('mine.txt', 'w').write('{i}')\ntime.sleep(1.0)\n"
                f"print('call', {i}, open('mine.txt').read())" for i in range(2)}
    reports: dict[int, str] = {}
    barrier = threading.Barrier(2)

    def call(i):
        barrier.wait()
        reports[i] = python.function(codes[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in codes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for i in codes:
        assert f"call {i} {i}" in reports[i], reports[i]


def test_endless_output_is_bounded_and_the_program_killed():
    limits = SandboxLimits(cpu_s=10, wall_s=15, max_output_chars=1000)
    start = time.monotonic()
    result = run_python('while True:\n    print("x" * 100000)', limits)
    assert time.monotonic() - start < 10
    assert result.killed_by == "output_limit"
    assert len(result.stdout) < 1200 and "output truncated" in result.stdout
    assert result.stdout.startswith("x" * 1000)
    assert "killed: output limit (over 10 x 1000 characters printed)" in result.report()


def test_output_under_the_cap_is_returned_whole():
    result = run_python("print('a' * 500)", SandboxLimits(max_output_chars=1000))
    assert result.ok and result.stdout == "a" * 500 + "\n"
