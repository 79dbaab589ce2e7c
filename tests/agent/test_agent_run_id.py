"""An agent run's id names its workspace folder: `--run-id ../..` put the file tools' workspace outside
$LMSTACK_HOME (two levels up from its workspaces/), and a 300-character id was a traceback."""

import contextlib
import sqlite3

import pytest

from cli_testing import one_line_error


@pytest.mark.parametrize("run_id", ["../..", "team/nightly", "x" * 300, ".hidden"])
def test_a_run_id_that_is_not_a_plain_name_is_refused_before_the_run(cli, tmp_path, run_id):
    done = cli("agent", "run", "x", "--model", "http://127.0.0.1:9/v1", "--run-id", run_id,
                   "--db", tmp_path / "agent.db")
    assert one_line_error(done, "agent", alone=False) == (
        f"lmstack agent: error: --run-id '{run_id}': use 1 to 128 letters, digits, '.', '_' or '-', beginning with a "
        "letter or digit (the id is part of the dashboard's URLs, and an agent run's workspace folder)")
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("agent.db")] == []  # nothing but the database
    with contextlib.closing(sqlite3.connect(tmp_path / "agent.db")) as conn:
        assert conn.execute("SELECT COUNT(*) FROM agent_runs").fetchone()[0] == 0  # and no run in it
