"""The process executing a run, recorded with the run (eval and agent runs alike): its pid, host name and start.

A run killed without a word (SIGKILL, the OOM killer, a power loss) cannot mark itself failed. Its recorded
process being gone is how `eval list`, reports and the dashboard tell it from a run still going, and how a
resume refuses a run that a live process is still writing. The host name keeps a pid recorded by another
machine sharing the database from being looked up here, where it names some other process or none. The start
keeps a pid reused since (after a reboot or a container restart, pids start over) from passing for the run's
process: a live process with the pid but another start is an unrelated one, and the run's own is gone.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

UNKNOWN = "unknown"  # the start of a process where /proc does not tell it (not Linux)


@dataclass(frozen=True, slots=True)
class Owner:
    pid: int | None  # None: a run recorded before runs recorded their process, or never started
    host: str | None
    start: str | None  # process_start() as recorded; None before starts were recorded

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Owner":
        return cls(row["owner_pid"], row["owner_host"], row["owner_start"])

    @property
    def verified(self) -> bool:
        """Whether a live process with this pid is certainly this one (its start was recorded and is checked),
        so that telling a user to `kill` it cannot hit an unrelated process that reused the pid."""
        return self.start not in (None, UNKNOWN)


def this_process() -> Owner:
    return Owner(os.getpid(), socket.gethostname(), process_start(os.getpid()))


def process_start(pid: int) -> str:
    """'BOOT_ID:TICKS': the boot, and the clock ticks from boot to the process's start (field 22 of
    /proc/PID/stat). The ticks tell a reused pid from its first process; the boot id tells a reboot, after which the
    ticks start over. UNKNOWN where /proc does not say."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return UNKNOWN
    fields = _stat_fields(pid)
    return UNKNOWN if fields is None else f"{boot_id}:{fields[22 - 3]}"


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat from field 3 on (None where /proc does not say). Field 2, the command name in
    parentheses, may itself hold spaces and ')': they are counted from its last ')'."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def process_state(owner: Owner) -> str:
    """'alive' or 'gone' for a process of this host; 'unknown' for another host's, or for a run recorded before
    processes were (pid None). A live pid whose start differs from the recorded one is another process: 'gone'."""
    if owner.pid is None or owner.host != socket.gethostname():
        return "unknown"
    if not pid_alive(owner.pid):
        return "gone"
    if not owner.verified:  # recorded before starts were, or where /proc is missing: the pid is all there is
        return "alive"
    return "gone" if process_start(owner.pid) not in (owner.start, UNKNOWN) else "alive"


def ended_unfinished(row: Mapping[str, Any], resume: str, gone: bool | None = None) -> str | None:
    """For a run stored as `running` whose process is gone (SIGKILL, a power loss: it could record nothing), why it
    stopped, ending with `resume` (how to continue it); None for any other run. The eval and agent stores show such a
    run as `interrupted`, derived on read, writing nothing. `gone`: already known, for a page that looked at every
    running run's process once (looking again could also disagree with what it filtered on)."""
    if row["status"] != "running":
        return None
    if not (gone if gone is not None else process_state(Owner.from_row(row)) == "gone"):
        return None
    return (f"process {row['owner_pid']} on {row['owner_host']} ended without finishing the run: killed, or the "
            f"machine went down; {resume}")


def executed_elsewhere(owner: Owner) -> bool:
    """Whether a live process other than this one executes the run recorded with `owner`: resuming it would make
    two processes write one run, each redoing the steps or samples the other has in flight."""
    return owner != this_process() and process_state(owner) == "alive"


def busy_reason(owner: Owner) -> str:
    """The end of a refused resume's message: which process has the run, and how to go on. `kill PID` only when the
    process is verified to be the run's, and of this host (a run dir on a shared file system may be another's)."""
    if owner.host is not None and owner.host != socket.gethostname():
        return (f"is being executed by process {owner.pid} on host '{owner.host}'; wait for it to finish, or stop it "
                "there and resume again")
    kill = f" (kill {owner.pid})" if owner.verified else ""
    return f"is being executed by process {owner.pid}; wait for it to finish, or stop it{kill} and resume again"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 sends nothing: it only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, run by another user
        pass
    # A zombie (killed, its parent yet to reap it: a container's init may never) still takes signal 0, but runs no
    # more: its run showed `running` for good, and a resume was refused naming it.
    fields = _stat_fields(pid)
    return fields is None or fields[0] not in ("Z", "X")  # field 3, the state: R, S, D... Z a zombie, X dead
