"""Runs inside the sandbox's new namespaces, as their root, before the untrusted code: make every
mount read-only except the scratch dir, then fork the code, which drops to `nobody`, sets the resource
limits and execs. Kept to the standard library and small, since it is the part that must not fail open.

It stays as the code's parent to report how the code ended, with the CPU seconds it used, on a pipe of its
own: the CPU limit kills with SIGKILL, which neither `unshare` (it cannot re-raise SIGKILL on itself, and
exits 1 saying "sigprocmask unblock failed") nor a plain exit status tells from any other death.
"""

import ctypes
import json
import os
import resource
import sys
import traceback

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
NOBODY = 65534
SANDBOX_TMP = "/tmp"
CPU_HARD_EXTRA_S = 1  # the hard CPU limit is this much over the soft one


def mount(libc, source, target, flags):
    if libc.mount(source, target.encode(), None, flags, None) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}: {os.strerror(ctypes.get_errno())}")


def confine_filesystem(scratch):
    """The scratch dir appears at /tmp (reachable by `nobody` whatever its real parents' modes);
    every other mount becomes read-only."""
    libc = ctypes.CDLL(None, use_errno=True)
    mount(libc, None, "/", MS_REC | MS_PRIVATE)
    mount(libc, scratch.encode(), SANDBOX_TMP, MS_BIND)
    with open("/proc/self/mountinfo") as f:
        mount_points = [line.split()[4].replace("\\040", " ") for line in f]
    for point in mount_points:
        if point == SANDBOX_TMP:
            continue
        try:
            mount(libc, None, point, MS_REMOUNT | MS_BIND | MS_RDONLY)
        except OSError:
            if point == "/":
                raise  # without a read-only root the sandbox would fail open


def limit_resources(limits):
    mib = 1024 * 1024
    for which, value in [(resource.RLIMIT_AS, limits["memory_mb"] * mib),
                         (resource.RLIMIT_NPROC, limits["max_processes"]),
                         (resource.RLIMIT_FSIZE, limits["max_file_mb"] * mib),
                         (resource.RLIMIT_NOFILE, limits["max_open_files"]), (resource.RLIMIT_CORE, 0)]:
        resource.setrlimit(which, (value, value))
    # At the soft CPU limit the kernel sends SIGXCPU, which ends a program that does not catch it and says by its
    # signal alone that the CPU limit did it; one that catches it (to print what it has) gets SIGKILL a second of
    # CPU later, at the hard limit, and then reads a full second over the soft one, whatever the rusage rounding.
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"] + CPU_HARD_EXTRA_S))


def drop_privileges():
    if os.geteuid() != 0:
        return
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    ctypes.CDLL(None).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def exec_code(setup, env):
    """In the forked child: become the untrusted program. Never returns, even when a step fails."""
    try:
        drop_privileges()
        limit_resources(setup["limits"])
        os.execve(setup["python"], [setup["python"], "-I", "__main__.py"], env)
    except BaseException:
        traceback.print_exc()
    os._exit(126)  # the code did not start; the parent's part must not run in the child


def report_end(child, end_fd):
    """Wait for the code and write {"exit_code": (negative: the signal), "cpu_s": ...} to `end_fd`."""
    _, status, usage = os.wait4(child, 0)
    end = {"exit_code": os.waitstatus_to_exitcode(status), "cpu_s": usage.ru_utime + usage.ru_stime}
    os.write(end_fd, json.dumps(end).encode())


def main():
    setup = json.loads(sys.argv[1])
    scratch = setup["scratch"]
    env = dict(os.environ)
    if setup["isolated"]:
        confine_filesystem(scratch)
        scratch = env["HOME"] = env["TMPDIR"] = SANDBOX_TMP
    os.chdir(scratch)
    child = os.fork()
    if child == 0:
        os.close(setup["end_fd"])  # the code must not write its own report
        exec_code(setup, env)
    report_end(child, setup["end_fd"])


if __name__ == "__main__":
    main()
