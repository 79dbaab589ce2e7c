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
