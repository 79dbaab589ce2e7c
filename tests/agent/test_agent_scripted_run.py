"""Multi-step runs against the scripted OpenAI-compatible server (a real uvicorn subprocess)."""

import json
import threading
import time
from pathlib import Path

import pytest

from agent_helpers import call, run_agent
from lmstack.agent.builtin_tools import calculator
from lmstack.agent.testing.scripted_server import ScriptedServer
from lmstack.agent.tools import tool

ACTIVE = {"now": 0, "max": 0}
LOCK = threading.Lock()


@tool
def slow_lookup(city: str) -> str:
    """Look up a city's population (takes a moment, to show that parallel calls overlap).

    Args:
        city: the city name.
    """
    with LOCK:
        ACTIVE["now"] += 1
        ACTIVE["max"] = max(ACTIVE["max"], ACTIVE["now"])
    time.sleep(0.3)
    with LOCK:
        ACTIVE["now"] -= 1
    return json.dumps({"city": city, "population": {"Paris": 2102650, "Lyon": 522250}[city]})


SCRIPT = {"scripts": {
    "multi": [
        {"tool_calls": [call("slow_lookup", {"city": "Paris"}), call("slow_lookup", {"city": "Lyon"})]},
        {"tool_calls": [call("calculator", {"expression": "2102650 + 522250"})]},
        {"content": "Paris has 2,102,650 people and Lyon 522,250, together 2624900."},
    ],
    "malformed": [
        {"tool_calls": [call("calculator", '{"expression": 12 * 3}')]},          # not JSON
        {"tool_calls": [call("calculator", {"expr": "12 * 3"})]},                 # wrong field
        {"tool_calls": [call("calculator", {"expression": "12 * 3"})]},           # corrected
        {"content": "12 * 3 = 36."},
    ],
}}


@pytest.fixture(scope="module")
def server():
    with ScriptedServer(SCRIPT) as s:
        yield s


@pytest.mark.parametrize("stream", [False, True])
def test_multi_step_run_with_parallel_tool_calls(tmp_path, server, stream):
    ACTIVE["max"] = 0
    record, conn = run_agent(tmp_path, server, "multi", "How many people live in Paris and Lyon together?",
                             [slow_lookup, calculator], stream=stream)
    assert record.status == "completed", record.stop_reason
    assert record.final_answer == "Paris has 2,102,650 people and Lyon 522,250, together 2624900."
    assert ACTIVE["max"] == 2, "the two lookups of one step must run at the same time"
    assert record.steps == 3
    # The model saw both tool results before the calculator step, and the calculator's exact sum before answering.
    requests = [r for r in server.requests() if r["model"] == "multi"][-3:]
    tool_messages = [m for m in requests[1]["messages"] if m["role"] == "tool"]
    assert [json.loads(m["content"])["city"] for m in tool_messages] == ["Paris", "Lyon"]
    assert requests[2]["messages"][-1]["content"] == str(2102650 + 522250)
    events = conn.execute("SELECT monitor FROM agent_events WHERE run_id = 'run1'").fetchall()
    assert events == [], "every number in the answer is grounded in a tool output"


def test_malformed_arguments_are_corrected_after_the_validation_message(tmp_path, server):
    record, conn = run_agent(tmp_path, server, "malformed", "What is 12 * 3?", [calculator])
    assert record.status == "completed", record.stop_reason
    assert record.final_answer == "12 * 3 = 36."
    requests = [r for r in server.requests() if r["model"] == "malformed"]
    first_error = requests[1]["messages"][-1]
    second_error = requests[2]["messages"][-1]
    assert first_error["role"] == "tool" and "not valid JSON" in first_error["content"]
    assert second_error["role"] == "tool" and "'expr'" in second_error["content"] and "expression" in second_error["content"]
    assert requests[3]["messages"][-1]["content"] == "36"
    hallucinated = conn.execute("SELECT text FROM agent_events WHERE monitor = 'tool_hallucination'").fetchall()
    assert [r["text"] for r in hallucinated] == ["expr"]


def test_a_scripted_server_that_cannot_start_says_why_and_leaves_no_script_file():
    server = ScriptedServer({"turns": []})  # no "scripts": the server's app cannot be built
    with pytest.raises(RuntimeError, match="(?s)scripted server exited: .*KeyError: 'scripts'"):
        server.__enter__()
    assert server.process.poll() is not None
    assert not Path(server._script_file.name).exists()
