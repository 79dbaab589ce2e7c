"""@tool schemas from type hints and docstrings; every failure becomes a message the model can act on."""

import json
import time
from typing import Literal

import pytest

from lmstack.agent.builtin_tools import MAX_RESULT_BITS, calculator, evaluate, list_files, read_file, write_file
from lmstack.agent.tools import ToolContext, ToolRegistry, ToolResult, tool


@tool(timeout_s=0.3)
def sleepy(seconds: float) -> str:
    """Sleep."""
    time.sleep(seconds)
    return "awake"


FLAKY_CALLS = []


@tool(retries=2)
def flaky(word: str) -> str:
    """Fails twice, then works."""
    FLAKY_CALLS.append(word)
    if len(FLAKY_CALLS) < 3:
        raise ConnectionError("upstream hiccup")
    return word.upper()


@tool(side_effecting=True)
def book_table(restaurant: str, people: int, time_slot: Literal["18:00", "20:00"] = "18:00",
               context: ToolContext = None) -> dict:
    """Book a table at a restaurant.

    Args:
        restaurant: the restaurant's name.
        people: how many guests, 1-12.
        time_slot: when.
    """
    return {"restaurant": restaurant, "people": people, "time": time_slot, "key": context.idempotency_key}


def test_schema_comes_from_type_hints_and_docstring():
    schema = book_table.schema()["function"]
    assert schema["name"] == "book_table" and schema["description"] == "Book a table at a restaurant."
    params = schema["parameters"]
    assert params["required"] == ["restaurant", "people"]
    assert params["properties"]["people"] == {"type": "integer", "description": "how many guests, 1-12."}
    assert params["properties"]["time_slot"]["enum"] == ["18:00", "20:00"]
    assert "context" not in params["properties"] and params["additionalProperties"] is False
    assert book_table.side_effecting


def prepare_and_run(registry, name, arguments, context=None):
    prepared = registry.prepare("c1", name, arguments)
    if isinstance(prepared, ToolResult):
        return prepared
    return registry.execute(prepared, context or ToolContext())


def test_every_kind_of_bad_call_becomes_a_correctable_message():
    registry = ToolRegistry([book_table, calculator])
    unknown = prepare_and_run(registry, "book_flight", "{}")
    assert unknown.error_kind == "unknown_tool" and "book_table" in unknown.content
    bad_json = prepare_and_run(registry, "book_table", '{"restaurant": "Noma", people: 2}')
    assert bad_json.error_kind == "invalid_json" and "not valid JSON" in bad_json.content
    for arguments, kind in (('["Noma", 2]', "array"), ('"Noma"', "string"), ("2", "number")):
        not_an_object = prepare_and_run(registry, "book_table", arguments)  # used to name a field '__root__'
        assert not_an_object.error_kind == "validation" and "__root__" not in not_an_object.content
        assert f"must be a JSON object of named arguments, got a JSON {kind}" in not_an_object.content
    wrong_type = prepare_and_run(registry, "book_table", json.dumps({"restaurant": "Noma", "people": "many"}))
    assert wrong_type.error_kind == "validation" and "'people'" in wrong_type.content and "integer" in wrong_type.content
    bad_enum = prepare_and_run(registry, "book_table", json.dumps({"restaurant": "Noma", "people": 2, "time_slot": "19:00"}))
    assert bad_enum.error_kind == "validation" and "'18:00'" in bad_enum.content
    raised = prepare_and_run(registry, "calculator", json.dumps({"expression": "1/0"}))
    assert raised.error_kind == "exception" and "ZeroDivisionError" in raised.content
    good = prepare_and_run(registry, "book_table", json.dumps({"restaurant": "Noma", "people": 2}),
                           ToolContext(idempotency_key="run/step0/tool0"))
    assert good.ok and json.loads(good.content) == {"restaurant": "Noma", "people": 2, "time": "18:00",
                                                    "key": "run/step0/tool0"}


def test_timeout_and_retry_policies():
    registry = ToolRegistry([sleepy, flaky])
    start = time.monotonic()
    slow = prepare_and_run(registry, "sleepy", '{"seconds": 3}')
    assert slow.error_kind == "timeout" and time.monotonic() - start < 1.5
    assert prepare_and_run(registry, "flaky", '{"word": "ok"}').content == "OK"
    assert len(FLAKY_CALLS) == 3


@pytest.mark.parametrize("expression,value", [("2 + 3 * 4", 14), ("(17 * 3) / 4", 12.75), ("2 ** 10", 1024),
                                              ("sqrt(16) + pi", 4 + 3.141592653589793), ("-7 // 2", -4)])
def test_calculator_matches_python_arithmetic(expression, value):
    assert evaluate(expression) == pytest.approx(value)


@pytest.mark.parametrize("attack", ["__import__('os').system('true')", "open('/etc/passwd').read()",
                                    "(1).__class__", "9 ** 9 ** 9", "[x for x in range(3)]", "lambda: 1"])
def test_calculator_refuses_anything_but_arithmetic(attack):
    with pytest.raises(ValueError):
        evaluate(attack)


def test_file_tools_are_confined_to_the_workspace(tmp_path):
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (tmp_path / "secret.txt").write_text("s3cret")
    (workspace / "link").symlink_to(tmp_path / "secret.txt")
    registry = ToolRegistry([read_file, write_file, list_files])
    context = ToolContext(workspace=workspace)
    assert prepare_and_run(registry, "write_file", '{"path": "notes/a.txt", "content": "hello"}', context).ok
    assert prepare_and_run(registry, "read_file", '{"path": "notes/a.txt"}', context).content == "hello"
    assert prepare_and_run(registry, "list_files", "{}", context).content == "link\nnotes/a.txt"
    for path in ["../secret.txt", str(tmp_path / "secret.txt"), "link"]:
        result = prepare_and_run(registry, "read_file", json.dumps({"path": path}), context)
        assert not result.ok and "outside the workspace" in result.content and "s3cret" not in result.content
    escaped = prepare_and_run(registry, "write_file", '{"path": "../evil.txt", "content": "x"}', context)
    assert not escaped.ok and not (tmp_path / "evil.txt").exists()


def test_memory_tools_save_search_and_stay_idempotent(tmp_path):
    from lmstack.agent.builtin_tools import memory_save, memory_search
    from lmstack.agent.memory import MemoryStore
    from lmstack.db import connect

    memory = MemoryStore(connect(tmp_path / "m.db"))
    registry = ToolRegistry([memory_save, memory_search])
    context = ToolContext(memory=memory, scope=("agent", "ana"), idempotency_key="r/step0/tool0")
    args = json.dumps({"text": "Ana's cat is called Miso.", "key": "ana.cat"})
    assert prepare_and_run(registry, "memory_save", args, context).content.startswith("saved memory")
    assert prepare_and_run(registry, "memory_save", args, context).content == "already saved"  # re-run after a crash
    found = prepare_and_run(registry, "memory_search", '{"query": "what is the cat called"}', context).content
    assert found.endswith("Ana's cat is called Miso.") and found.count("\n") == 0


def test_python_tool_runs_in_the_sandbox(tmp_path):
    from lmstack.agent.builtin_tools import python
    from lmstack.agent.sandbox import namespaces_available

    result = prepare_and_run(ToolRegistry([python]), "python", json.dumps({"code": "print(6 * 7)"}),
                             ToolContext(workspace=tmp_path))
    assert result.ok and "stdout:\n42" in result.content
    assert f"isolation={'namespaces' if namespaces_available() else 'rlimits'}" in result.content


@pytest.mark.parametrize("expression", ["((10**9999)**9999)**9999", "(10**9999)**20", "(10**9999)*(10**9999)*(10**9999)*(10**9999)"])
def test_calculator_refuses_huge_integer_results_quickly(expression):
    """A capped exponent alone let ((10**9999)**9999)**9999 through, freezing the process; the check
    runs in a child so a regression fails here instead of hanging the test run."""
    import subprocess
    import sys

    program = ("import json; from lmstack.agent.builtin_tools import calculator\n"
               "from lmstack.agent.tools import ToolContext, ToolRegistry\n"
               "r = ToolRegistry([calculator]); p = r.prepare('c1', 'calculator', json.dumps({'expression': %r}))\n"
               "res = r.execute(p, ToolContext()); print(res.error_kind, res.content)" % expression)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("exception") and "bits (limit 14000)" in done.stdout


def test_calculator_still_computes_big_but_reasonable_integers():
    assert evaluate("2**10000") == 2 ** 10000 and evaluate("(10**300)*(10**300)") == 10 ** 600


TWO_TO_13998 = "(2**7000)*(2**6998)"  # passes the per-operation check at 14,000 bits


@pytest.mark.parametrize("expression", ["10**4200", " + ".join([TWO_TO_13998] * 2), " + ".join([TWO_TO_13998] * 4),
                                        "(10**4000)*(10**400)", "0x" + "f" * 3600, "abs(-0x" + "f" * 3600 + ")"])
def test_calculator_results_are_printable_or_refused_with_its_own_message(expression):
    """Every integer it accepts must print (Python refuses str() of ints over 4,300 digits)."""
    result = prepare_and_run(ToolRegistry([calculator]), "calculator", json.dumps({"expression": expression}),
                             ToolContext())
    value = eval(expression)  # the test's own reference: plain Python on a fixed literal
    if value.bit_length() <= MAX_RESULT_BITS:
        assert result.ok and result.content == str(value)
    else:
        assert not result.ok and "limit 14000" in result.content and "set_int_max_str_digits" not in result.content
