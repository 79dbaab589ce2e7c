"""One writer per run dir: the process that writes a run (rank 0) holds an exclusive flock on `run_dir/.lock` from
before its start touches the dir until it is done.

Two writers of one run dir would each resume from the other's checkpoints and overwrite its files: a second
`lmstack train` of a run still training, or a re-run while the workers of a torchrun whose launcher was killed train
on. Only rank 0 writes, so rank 0 holds the lock, and an orphaned rank 0 holds it for as long as it lives. A flock,
not a pid file, because the kernel releases it when its process ends, however it ends (SIGKILL, the OOM killer): no
dead run leaves a lock behind. The file names the holder (lmstack.run_owner's pid, host and start) for the message
that refuses a second writer; the holder removes it when done (one killed leaves it, unlocked, for the next).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from pathlib import Path

from lmstack.errors import LmstackError
from lmstack.run_owner import Owner, busy_reason, process_state, this_process

LOCK_FILE = ".lock"


class RunDirLock:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or refuse with the holder's pid and the fix; `run_dir` must exist."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_holder(fd)
                os.close(fd)
                raise LmstackError(refusal(self.run_dir, holder)) from None
            if still_at(fd, self.path):
                break
            os.close(fd)  # its holder removed the file between our open and our lock: lock the one there now
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(dataclasses.asdict(this_process())).encode())
        self.fd = fd

    def move_dir(self, new_dir: Path) -> None:
        """Rename the run dir while holding its lock: no writer can start in it between the check and the move. The
        lock file moves with the dir, so `release` removes it there."""
        self.run_dir.rename(new_dir)
        self.run_dir, self.path = new_dir, new_dir / LOCK_FILE

    def release(self) -> None:
        """Remove the file and let the next writer in: a run that ended, or a start that failed, leaves no lock file."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while held: a start that opened it already finds it gone once it locks it
        os.close(self.fd)
        self.fd = None


def still_at(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def read_holder(fd: int) -> Owner | None:
    try:
        return Owner(**json.loads(os.pread(fd, 4096, 0)))
    except (ValueError, TypeError):  # not written yet: the holder has only just taken the lock
        return None


def refusal(run_dir: Path, holder: Owner | None) -> str:
    # A holder that has not yet written itself leaves the file empty, or naming the last holder, which is gone.
    if holder is None or process_state(holder) == "gone":
        return (f"run dir '{run_dir}' is being written by another process, which is just starting; wait for it to "
                "finish, or stop it and re-run")
    return f"run dir '{run_dir}' {busy_reason(holder)}"
