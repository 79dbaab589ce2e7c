"""Run untrusted Python in a subprocess with limits.

Layers, from outside in:
1. Wall-clock kill: the whole process group (and, with namespaces, the whole PID namespace) dies
   when `wall_s` runs out.
2. Linux namespaces via `unshare` (when we may create them, e.g. as root or with user namespaces):
   a new network namespace (only a downed loopback: no network at all), a new PID namespace (a fork
   bomb cannot see or signal other processes, and dies with its init), and a new mount namespace in
   which the scratch directory is mounted at /tmp and every other mount is remounted read-only.
3. Inside: the child drops to uid/gid `nobody` (when started as root) with no_new_privs, so it
   cannot undo the read-only mounts or read other users' 0600 files or /proc/PID/environ of ours.
4. `setrlimit`: CPU seconds, address space, process count, file size, open files.
5. A minimal environment (PATH, HOME and TMPDIR pointing at the scratch dir, LANG): no secrets.

What it does NOT protect against: kernel exploits and container escapes (it is not a VM); reading
world-readable files (the filesystem is visible read-only); CPU-cache side channels; exhausting
disk inside the scratch dir up to the file-size limit times the number of files; and, where
namespaces are unavailable (`isolation == "rlimits"`), network access and writes to any path the
user may write -- that fallback only limits resources and the environment.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

NOBODY = 65534


@dataclass
class SandboxLimits:
    cpu_s: int = 10
    wall_s: float = 20.0
    memory_mb: int = 512
    max_processes: int = 32
    max_file_mb: int = 16
    max_open_files: int = 64
    max_output_chars: int = 20_000


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    exit_code: int | None
    killed_by: str | None  # "wall_clock" | "cpu_time" | "output_limit" | "signal NAME" | None
    isolation: str  # "namespaces" | "rlimits"
    wall_s: float
    limits: SandboxLimits

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed_by is None

    def report(self) -> str:
        if self.ok:
            status = "ok"
        else:
            status = f"killed: {self.kill_reason()}" if self.killed_by else f"exit code {self.exit_code}"
        parts = [f"[sandbox: {status}, {self.wall_s:.2f} s, isolation={self.isolation}]"]
        if self.stdout:
            parts.append(f"stdout:\n{self.stdout}")
        if self.stderr:
            parts.append(f"stderr:\n{self.stderr}")
        return "\n".join(parts)

    def kill_reason(self) -> str:
        """What killed the program, with the limit it ran into, in words the model can act on."""
        limits = {"wall_clock": f"wall-clock limit ({self.limits.wall_s:g} s)",
                  "cpu_time": f"CPU time limit ({self.limits.cpu_s} s)",
                  "output_limit": f"output limit (over {OUTPUT_KILL_FACTOR} x {self.limits.max_output_chars} "
                                  "characters printed)"}
        return limits.get(self.killed_by, self.killed_by)


@functools.lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """Whether `unshare` can give us net+pid+mount namespaces and remount read-only here."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--",
             "sh", "-c", "mount --make-rprivate / && mount -o remount,bind,ro / 2>/dev/null || exit 3"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.lru_cache(maxsize=1)
def sandbox_python() -> str:
    """An interpreter `nobody` may execute: ours if every directory above it is world-searchable
    (a venv under a private home is not), else the system's python3."""
    for candidate in (os.path.realpath(sys.executable), shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
        if candidate and all(os.stat(p).st_mode & 0o001 for p in [candidate, *Path(candidate).parents]):
            return candidate
    return sys.executable


def run_python(code: str, limits: SandboxLimits | None = None, scratch_dir: str | Path | None = None) -> SandboxResult:
    """Run `code` with `python -I` in the sandbox; the scratch dir is its cwd and only writable place."""
    limits = limits or SandboxLimits()
    own_scratch = scratch_dir is None
    scratch = Path(scratch_dir or tempfile.mkdtemp(prefix="lmstack-sandbox-")).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    isolated = namespaces_available()
    end_read, end_write = os.pipe()  # sandbox_boot reports on it how the code ended
    try:
        (scratch / "__main__.py").write_text(code)
        if os.geteuid() == 0:
            os.chown(scratch, NOBODY, NOBODY)
        boot = Path(__file__).with_name("sandbox_boot.py")
        setup = json.dumps({"scratch": str(scratch), "limits": limits.__dict__, "isolated": isolated,
                            "python": sandbox_python(), "end_fd": end_write})
        command = [sys.executable, "-I", str(boot), setup]
        if isolated:
            command = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--"] + command
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(scratch), "TMPDIR": str(scratch), "LANG": "C.UTF-8"}
        return _run(command, env, scratch, limits, "namespaces" if isolated else "rlimits", end_read, end_write)
    finally:
        os.close(end_read)
        os.close(end_write)
        if own_scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(command: list[str], env: dict, scratch: Path, limits: SandboxLimits, isolation: str, end_read: int,
         end_write: int) -> SandboxResult:
    start = time.monotonic()
    process = subprocess.Popen(command, env=env, cwd=scratch, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=(end_write,))
    cap = limits.max_output_chars
    # The parent keeps at most `cap` (+ a little) of each stream, never the whole output; a program
    # that keeps printing far past the cap is killed rather than drained forever.
    stdout = _BoundedReader(process.stdout, cap, keep="head", on_flood=functools.partial(_kill_group, process.pid))
    stderr = _BoundedReader(process.stderr, cap, keep="tail", on_flood=functools.partial(_kill_group, process.pid))
    killed_by = None
    try:
        process.wait(timeout=limits.wall_s)
    except subprocess.TimeoutExpired:
        killed_by = "wall_clock"
        _kill_group(process.pid)
        process.wait()
    _kill_group(process.pid)  # stragglers that left the group die with the PID namespace's init
    stdout.join(timeout=5)
    stderr.join(timeout=5)
    end = _read_end(end_read)
    exit_code = end["exit_code"] if end else process.returncode
    if killed_by is None and (stdout.flooded or stderr.flooded):
        killed_by = "output_limit"
    # The CPU limit ends a program with SIGXCPU at `cpu_s` (sandbox_boot sets the soft limit), or, one that caught
    # that, with SIGKILL at the hard limit a second later. The rusage of a program killed at a limit of 10 s can read
    # 9.95 s under load (a SIGKILL at the soft limit was taken for another's, "signal SIGKILL"): past the soft limit
    # is a second's margin, and no other SIGKILL comes after that much CPU time but the wall clock's, checked above.
    if killed_by is None and end and (exit_code == -signal.SIGXCPU
                                      or (exit_code == -signal.SIGKILL and end["cpu_s"] >= limits.cpu_s)):
        killed_by = "cpu_time"
    if killed_by is None and exit_code is not None and exit_code < 0:
        killed_by = f"signal {signal.Signals(-exit_code).name}"
    return SandboxResult(stdout.text(), stderr.text(), exit_code, killed_by, isolation, time.monotonic() - start,
                         limits)


def _read_end(end_read: int) -> dict | None:
    """How the code ended, as sandbox_boot reported it; None when the boot was killed first (with the group)."""
    os.set_blocking(end_read, False)  # the boot writes before it exits: what is there now is all there will be
    try:
        return json.loads(os.read(end_read, 4096))
    except (BlockingIOError, ValueError):
        return None


OUTPUT_KILL_FACTOR = 10  # kill the program once a stream has printed this many times the cap


class _BoundedReader(threading.Thread):
    """Drains one pipe, keeping its first (`keep="head"`) or last (`"tail"`) `cap` bytes and counting the rest."""

    def __init__(self, pipe, cap: int, keep: str, on_flood: Callable[[], object]):
        super().__init__(daemon=True)
        self.pipe, self.cap, self.keep, self.on_flood = pipe, cap, keep, on_flood
        self.flood_at = OUTPUT_KILL_FACTOR * cap + 65536
        self.flooded = False
        self.kept = bytearray()
        self.total = 0
        self.start()

    def run(self) -> None:
        try:
            while chunk := self.pipe.read1(65536):
                self.total += len(chunk)
                if self.keep == "head":
                    if len(self.kept) < self.cap:
                        self.kept += chunk[:self.cap - len(self.kept)]
                else:
                    self.kept += chunk
                    if len(self.kept) > self.cap:
                        del self.kept[:len(self.kept) - self.cap]
                if not self.flooded and self.total > self.flood_at:
                    self.flooded = True
                    self.on_flood()
        except (OSError, ValueError):
            pass
        finally:
            self.pipe.close()

    def text(self) -> str:
        text = self.kept.decode(errors="replace")  # at most `cap` bytes kept, so at most `cap` characters
        dropped = self.total - len(self.kept)
        if dropped <= 0:
            return text
        note = f"[output truncated: {dropped} more bytes dropped of {self.total}]"
        return f"{text}\n{note}" if self.keep == "head" else f"{note}\n{text}"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
