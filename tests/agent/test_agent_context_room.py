"""A small model's context against the scripted server with a context (`contexts` in its script): the latest tool
call and its result stay in the prompt at the cost of the reply's room, and a prompt the server refuses as too long
is fitted again with the server's own count, instead of ending the run `failed`."""

import json

import pytest

from agent_helpers import call, run_agent
from lmstack.agent.builtin_tools import calculator
from lmstack.agent.settings import AgentConfig
from lmstack.agent.testing.scripted_server import ScriptedServer

TASK = "What is 17% of 2,340?"
TURNS = [{"tool_calls": [call("calculator", {"expression": "17 * 2340 / 100"})]}, {"content": "397.8"}]
# The server counts the system prompt, the task and the calculator's schema as 180 tokens, and 264 with the call and
# its result (~3 characters a token); the runtime's first estimate of them is 124 (~4 a token).
SCRIPT = {"scripts": {"room": TURNS, "refused": TURNS}, "contexts": {"room": 272, "refused": 310}}


@pytest.fixture(scope="module")
def server():
    with ScriptedServer(SCRIPT) as s:
        yield s


def answered(server, model: str) -> list[dict]:
    return [r for r in server.requests() if r["model"] == model]


def test_the_latest_call_and_its_result_take_reply_room_rather_than_being_dropped(tmp_path, server):
    """Regression (the README's own example on the 256-token demo model looped to loop_detected): a quarter of the
    context was kept for the reply (68 of 272), and the call with its result (~221 estimated) did not fit beside
    it, so the request of step 1 held only the task and the model made the same call again."""
    record, _ = run_agent(tmp_path, server, "room", TASK, [calculator])
    assert record.status == "completed" and record.final_answer == "397.8", record.stop_reason
    step1 = answered(server, "room")[1]["messages"]
    assert [m["role"] for m in step1] == ["system", "user", "assistant", "tool"] and step1[3]["content"] == "397.8"


def test_a_prompt_refused_as_too_long_is_fitted_again_with_the_servers_count(tmp_path, server):
    """Regression: the ~4-characters-a-token estimate let through prompts the server counts longer; its 400
    ("the prompt of 180 tokens + max_tokens=140 does not fit the context of 310 tokens") ended the run `failed`; a
    resume made the same request again."""
    config = AgentConfig(max_output_tokens=140)
    record, conn = run_agent(tmp_path, server, "refused", TASK, [calculator], config)
    assert record.status == "completed" and record.final_answer == "397.8", record.stop_reason
    sent = answered(server, "refused")
    counted = [json.loads(r["response"])["usage"]["prompt_tokens"] for r in conn.execute(
        "SELECT response FROM agent_journal WHERE kind = 'model' ORDER BY started_at")]
    # Each step was refused once (its estimate too low), then sent with the reply's room cut to what the server's
    # count of the prompt leaves of its context, the call and its result kept.
    assert len(sent) == 4 and sent[0]["max_tokens"] == 140
    assert [sent[1]["max_tokens"], sent[3]["max_tokens"]] == [310 - counted[0], 310 - counted[1]]
    assert [m["role"] for m in sent[3]["messages"]] == ["system", "user", "assistant", "tool"]
    # the journal records the request sent in the end, not the one refused (its trace showed the refused one)
    recorded = [json.loads(r["request"]) for r in conn.execute(
        "SELECT request FROM agent_journal WHERE kind = 'model' ORDER BY started_at")]
    assert [(r["messages"], r["max_tokens"]) for r in recorded] == [(sent[i]["messages"], sent[i]["max_tokens"])
                                                                    for i in (1, 3)]
