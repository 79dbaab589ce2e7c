"""A --tools file.py:function that cannot give the tool: one line naming the file (and the line of a syntax error)
and what is wrong, from a real `lmstack agent run`; never the import's traceback."""

import pytest

from cli_testing import one_line_error, run_cli

GOOD = '''from lmstack.agent.tools import tool


@tool
def shout(text: str) -> str:
    """Upper-case the text.

    Args:
        text: what to shout.
    """
    return text.upper()


def helper(text: str) -> str:
    return text
'''

CASES = {
    "syntax error": ("def f(:\n    pass\n", "mytools.py:f", "'{path}' line 1: invalid syntax; fix the file"),
    "raises at import": ("import os\nAPI_KEY = os.environ['NO_SUCH_VARIABLE_SET']\n", "mytools.py:f",
                         "importing 'mytools.py' raised KeyError: 'NO_SUCH_VARIABLE_SET'; fix the module"),
    "no such name": (GOOD, "mytools.py:missing",
                     "'mytools.py' has no attribute 'missing'; its @tool functions: shout"),
    "not a tool": (GOOD, "mytools.py:helper", "'helper' in 'mytools.py' is not a @tool function; decorate it with @tool"),
}


@pytest.mark.parametrize("case", CASES)
def test_a_tool_file_that_cannot_give_the_tool_is_one_line_naming_it(tmp_path, case, monkeypatch):
    source, spec, says = CASES[case]
    (tmp_path / "mytools.py").write_text(source)
    monkeypatch.chdir(tmp_path)  # the file is named relative to where the user is, as in `--tools mytools.py:f`
    refused = run_cli("agent", "run", "x", "--model", "http://127.0.0.1:9/v1", "--model-name", "m", "--tools", spec,
                      "--db", tmp_path / "lmstack.db")
    expected = f"lmstack agent: error: --tools '{spec}': " + says.format(path=tmp_path.resolve() / "mytools.py")
    assert one_line_error(refused, "agent", alone=False) == expected
