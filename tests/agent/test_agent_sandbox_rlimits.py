"""Without namespaces the sandbox still limits resources, and says which limit killed the program. Run in a real
process whose PATH has no `unshare`, which is what makes the sandbox fall back to rlimits alone."""

import json
import os
import subprocess
import sys

SANDBOXED = """
import json
from lmstack.agent.sandbox import SandboxLimits, run_python
result = run_python({code!r}, SandboxLimits(cpu_s=1, wall_s={wall_s}))
print(json.dumps({{"isolation": result.isolation, "killed_by": result.killed_by, "report": result.report()}}))
"""


def run_without_namespaces(code: str, wall_s: float) -> dict:
    done = subprocess.run([sys.executable, "-c", SANDBOXED.format(code=code, wall_s=wall_s)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PATH": "/nonexistent"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_cpu_limit_kill_is_reported_as_such():
    # It read "killed (signal SIGKILL)": any other SIGKILL alike.
    result = run_without_namespaces("while True:\n    pass", wall_s=10)
    assert (result["isolation"], result["killed_by"]) == ("rlimits", "cpu_time")
    assert result["report"].startswith("[sandbox: killed: CPU time limit (1 s), ")


def test_a_sleeping_program_is_killed_by_the_wall_clock_not_the_cpu_limit():
    result = run_without_namespaces("import time\ntime.sleep(60)", wall_s=1.5)
    assert (result["isolation"], result["killed_by"]) == ("rlimits", "wall_clock")
    assert result["report"].startswith("[sandbox: killed: wall-clock limit (1.5 s), ")


def test_a_program_past_its_cpu_time_is_warned_with_sigxcpu_then_killed_and_told_so():
    """Regression: the soft and hard CPU limits were equal, so the kernel's SIGKILL came with no SIGXCPU, and a kill
    whose rusage read just under the limit (9.95 s of 10, under load) was reported as "signal SIGKILL". The soft
    limit's SIGXCPU now ends the program (a signal only the CPU limit sends here), or lets it print what it has."""
    code = ("import signal, sys\n"
            "signal.signal(signal.SIGXCPU, lambda *_: print('caught SIGXCPU', flush=True))\n"
            "while True:\n    pass")
    result = run_without_namespaces(code, wall_s=10)
    assert result["killed_by"] == "cpu_time" and "stdout:\ncaught SIGXCPU" in result["report"]
    assert result["report"].startswith("[sandbox: killed: CPU time limit (1 s), ")
