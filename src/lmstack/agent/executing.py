"""The agent runs this process is executing: one executor per run per process.

`store.claim_run` keeps a second process from executing a run, but takes this process for the run's own: two
threads of one process (the dashboard resuming a run for each of two approvals) would both execute it, each redoing
the steps and tool calls the other has in flight. A run id is claimed here before `claim_run` and released when its
executor stops.
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

T = TypeVar("T")


class ExecutingRuns:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._run_ids: set[str] = set()

    def claim(self, run_id: str) -> bool:
        """Take the run for the calling executor; False when another thread of this process executes it."""
        with self._lock:
            if run_id in self._run_ids:
                return False
            self._run_ids.add(run_id)
            return True

    def while_executing(self, run_id: str, action: Callable[[], T]) -> tuple[bool, T | None]:
        """(True, action()) when a thread of this process executes the run, with `action` called under the lock: the
        executor's `release` waits for it, so its `keep` sees what `action` wrote. (False, None) when none does."""
        with self._lock:
            if run_id not in self._run_ids:
                return False, None
            return True, action()

    def release(self, run_id: str, keep: Callable[[], bool] = lambda: False) -> bool:
        """Give the run up, unless `keep()`, asked under the lock, says its executor has more to do; whether it was
        given up. Whatever a caller wrote before a refused `claim` is there for `keep` to see: the refusal held the
        lock first. So a decision recorded for a run whose executor was stopping is not left unresumed."""
        with self._lock:
            if keep():
                return False
            self._run_ids.discard(run_id)
            return True


EXECUTING = ExecutingRuns()  # process-wide: every runtime of every thread claims here
