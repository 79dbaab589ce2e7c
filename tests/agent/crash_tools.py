"""A side-effecting tool for the crash tests: increments a SQLite counter in the run's workspace.

It records its effect under the call's idempotency key in the same transaction as the increment,
so a call re-run after a crash (journal says "started", effect already committed) changes nothing.
Each first execution is also logged, for the test to check that no call ran twice.
"""

import sqlite3
import time
from pathlib import Path

from lmstack.agent.tools import ToolContext, tool


@tool(side_effecting=True)
def bump_counter(counter: str, note: str, context: ToolContext) -> str:
    """Add one to a named counter.

    Args:
        counter: the counter's name.
        note: why (free text).
    """
    time.sleep(0.05)  # widen the window between the journal's "started" and the effect
    db = sqlite3.connect(Path(context.workspace) / "counter.db", isolation_level=None, timeout=30)
    try:
        db.execute("CREATE TABLE IF NOT EXISTS effects (idempotency_key TEXT PRIMARY KEY, result TEXT)")
        db.execute("CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER)")
        db.execute("BEGIN IMMEDIATE")
        done = db.execute("SELECT result FROM effects WHERE idempotency_key = ?", (context.idempotency_key,)).fetchone()
        if done:
            db.execute("COMMIT")
            return done[0]
        db.execute("INSERT INTO counters VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1", (counter,))
        value = db.execute("SELECT value FROM counters WHERE name = ?", (counter,)).fetchone()[0]
        result = f"{counter} is now {value}"
        db.execute("INSERT INTO effects VALUES (?, ?)", (context.idempotency_key, result))
        db.execute("COMMIT")
    finally:
        db.close()
    time.sleep(0.05)  # and between the effect and the journal's "completed"
    return result
