"""`lmstack ui --db PATH` shows the runs recorded in PATH: a path with no database is refused, as the agent commands
refuse it, and nothing is created (it used to start a dashboard on a new empty database, folders and all)."""

from __future__ import annotations

from cli_testing import one_line_error, run_cli


def test_an_explicit_db_that_does_not_exist_is_refused_and_nothing_is_created(tmp_path):
    missing = tmp_path / "nonexist" / "x.db"
    refused = run_cli("ui", "--db", missing, "--port", "0", timeout=60)  # port 0: any free one, had it started
    assert one_line_error(refused, "ui").endswith(f"database '{missing}' does not exist; pass the --db your agent and "
                                                  "eval runs were recorded in, or leave --db out for the default "
                                                  "($LMSTACK_HOME/lmstack.db)")
    assert list(tmp_path.iterdir()) == []
