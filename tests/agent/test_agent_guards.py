"""Budgets, loop detection, approvals, monitor policies and client retries, against the scripted server."""

import pytest

from agent_helpers import call, run_agent
from lmstack.agent.builtin_tools import calculator
from lmstack.agent.client import OpenAIClient, RetryPolicy
from lmstack.agent.settings import AgentConfig
from lmstack.agent.testing.scripted_server import ScriptedServer
from lmstack.agent.tools import tool

APPROVED = []


@tool(requires_approval=True, side_effecting=True, actions=("sent",))
def send_payment(to: str, amount_usd: float) -> str:
    """Send money.

    Args:
        to: recipient.
        amount_usd: amount in US dollars.
    """
    APPROVED.append((to, amount_usd))
    return f"sent ${amount_usd:.2f} to {to}"


def counting(i):
    return {"tool_calls": [call("calculator", {"expression": f"{i} + 1"})],
            "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}


SCRIPT = {"scripts": {
    "long": [counting(i) for i in range(10)] + [{"content": "done"}],
    "loop": [{"tool_calls": [call("calculator", {"expression": "1 + 1"})]}] * 5 + [{"content": "2"}],
    "stuck": [{"tool_calls": [call("calculator", {"expression": f"1 / {0}"})]} for _ in range(8)] + [{"content": "?"}],
    "pay": [{"tool_calls": [call("send_payment", {"to": "Ana", "amount_usd": 12.5})]},
            {"content": "Sent $12.50 to Ana."}],
    "invented": [{"content": "The answer is 42, as the Oracle of Delphi said."},
                 {"content": "I do not know the answer yet."}],
    "invented_stop": [{"content": "The answer is 42."}],
    "flaky": [{"fail": [429, 503], "content": "survived"}],
    "hello": [{"content": "hello back"}],
    "broken": [{"fail": [500] * 10, "content": "never"}],
    "slow": [{"delay_s": 1.0, "content": "too late"}],  # outlasts a 0.3 s timeout, and a second thread refused meanwhile
    "sampled": [{"content": "The answer is 417.", "samples": ["The answer is 417.", "It is 471.", "Maybe 714."]}],
    "guessing": [{"content": "Revenue was 9,120 dollars.", "logprobs": [
        {"token": t, "logprob": lp, "top_logprobs": [{"token": t, "logprob": lp}, {"token": "7", "logprob": -1.0},
                                                     {"token": "3", "logprob": -1.1}, {"token": "5", "logprob": -1.2}]}
        for t, lp in [("Revenue", -0.1), (" was", -0.1), (" 9", -0.3), (",", -0.2), ("120", -3.2), (" dollars", -0.1),
                      (".", -0.05)]]}],
}}


@pytest.fixture(scope="module")
def server():
    with ScriptedServer(SCRIPT) as s:
        yield s


def sent_requests(server, name):
    return [r for r in server.requests() if r["model"] == name]


def test_step_budget_stops_the_run(tmp_path, server):
    config = AgentConfig()
    config.budget.max_steps = 3
    record, _ = run_agent(tmp_path, server, "long", "count", [calculator], config)
    assert record.status == "budget_exceeded" and record.stop_reason.startswith("steps")
    assert record.steps == 3


def test_token_budget_stops_the_run(tmp_path, server):
    config = AgentConfig()
    config.budget.max_tokens = 2500  # scripted usage is 1100 tokens per call
    record, _ = run_agent(tmp_path, server, "long", "count", [calculator], config)
    assert record.status == "budget_exceeded" and record.stop_reason.startswith("tokens")
    assert record.prompt_tokens + record.completion_tokens == 3300


def test_a_run_over_its_dollar_budget_never_makes_the_next_call(tmp_path, server):
    before = len(sent_requests(server, "long"))
    config = AgentConfig()
    # $10 / $30 per million tokens: each scripted call (1000 in, 100 out) costs $0.013.
    config.budget.price_in_per_mtok, config.budget.price_out_per_mtok = 10.0, 30.0
    config.budget.max_dollars = 0.03
    record, _ = run_agent(tmp_path, server, "long", "count", [calculator], config)
    assert record.status == "budget_exceeded" and record.stop_reason.startswith("dollars")
    assert record.cost_usd == pytest.approx(2 * 0.013) and record.cost_usd <= 0.03
    assert len(sent_requests(server, "long")) - before == 2  # the third call would have crossed $0.03


def test_the_same_call_repeated_is_a_loop(tmp_path, server):
    record, conn = run_agent(tmp_path, server, "loop", "add", [calculator])
    assert record.status == "loop_detected" and "repeated 3 times" in record.stop_reason
    executed = conn.execute("SELECT COUNT(*) FROM agent_journal WHERE kind = 'tool'").fetchone()[0]
    assert executed == 2  # the third identical call is not run


def test_no_progress_stops_the_run(tmp_path, server):
    config = AgentConfig()
    config.loops.repeat_limit = 100
    config.loops.no_progress_limit = 4
    record, _ = run_agent(tmp_path, server, "stuck", "divide", [calculator], config)
    assert record.status == "no_progress" and record.steps == 4


def test_approval_pauses_the_run_until_approved(tmp_path, server):
    from lmstack.agent.launch import pending_approvals, record_decisions
    from lmstack.agent.runtime import AgentRuntime
    from lmstack.agent.tools import ToolRegistry

    APPROVED.clear()
    record, conn = run_agent(tmp_path, server, "pay", "pay Ana", [send_payment])
    assert record.status == "waiting" and "lmstack agent approve run1" in record.stop_reason
    assert APPROVED == []
    assert pending_approvals(conn, "run1") == ["step0/tool0"]
    record_decisions(conn, "run1", True, ["step0/tool0"])
    config = AgentConfig(model=server.base_url, model_name="pay", workspace=str(tmp_path / "workspace"))
    runtime = AgentRuntime(conn, "run1", config, OpenAIClient(server.base_url, "pay"), ToolRegistry([send_payment]),
                           tmp_path / "workspace")
    record = runtime.run()
    assert record.status == "completed" and APPROVED == [("Ana", 12.5)]


def test_a_denied_call_is_reported_to_the_model(tmp_path, server):
    from lmstack.agent.launch import pending_approvals, record_decisions
    from lmstack.agent.runtime import AgentRuntime
    from lmstack.agent.tools import ToolRegistry

    APPROVED.clear()
    _, conn = run_agent(tmp_path, server, "pay", "pay Ana", [send_payment])
    record_decisions(conn, "run1", False, pending_approvals(conn, "run1"))
    config = AgentConfig(model=server.base_url, model_name="pay")
    record = AgentRuntime(conn, "run1", config, OpenAIClient(server.base_url, "pay"), ToolRegistry([send_payment]),
                          tmp_path).run()
    assert APPROVED == [] and record.status == "completed"
    assert "denied" in sent_requests(server, "pay")[-1]["messages"][-1]["content"]
    flagged = conn.execute("SELECT text FROM agent_events WHERE monitor = 'action_claims'").fetchall()
    assert [r["text"] for r in flagged] == [], "'Sent $12.50' is not a first-person claim the monitor parses"


def test_a_call_decided_elsewhere_meanwhile_keeps_that_decision(tmp_path, server):
    from lmstack.agent.launch import pending_approvals, record_decisions

    _, conn = run_agent(tmp_path, server, "pay", "pay Ana", [send_payment])
    keys = pending_approvals(conn, "run1")  # the dashboard found the call, and checks the model is reachable ...
    record_decisions(conn, "run1", False, pending_approvals(conn, "run1"))  # ... while `agent approve --deny` does
    record_decisions(conn, "run1", True, keys)
    decisions = conn.execute("SELECT decision FROM agent_approvals WHERE run_id = 'run1'").fetchall()
    assert [r["decision"] for r in decisions] == ["denied"]


def test_an_approval_that_lost_the_race_neither_reports_a_decision_nor_resumes(tmp_path, server):
    """Two clicks on the dashboard's approve: both find the call pending, and only the first to decide it may resume
    the run; the second resuming it too ran the approved tool twice."""
    from lmstack.agent.launch import decide_approvals, open_database, pending_approvals, record_decisions
    from lmstack.errors import LmstackError

    _, conn = run_agent(tmp_path, server, "pay", "pay Ana", [send_payment])
    other = open_database(tmp_path / "lmstack.db")

    def first_click_decides_meanwhile():
        assert record_decisions(other, "run1", True, pending_approvals(other, "run1")) == ["step0/tool0"]
        return None

    with pytest.raises(LmstackError, match="step0/tool0 was decided meanwhile by another approval"):
        decide_approvals(conn, "run1", True, None, first_click_decides_meanwhile)
    other.close()


def test_monitor_retry_policy_re_asks_with_feedback(tmp_path, server):
    config = AgentConfig()
    config.monitors.grounding = "retry"
    record, conn = run_agent(tmp_path, server, "invented", "What is the answer?", [calculator], config)
    assert record.status == "completed" and record.final_answer == "I do not know the answer yet."
    feedback = sent_requests(server, "invented")[-1]["messages"][-1]
    assert feedback["role"] == "user" and "Monitor feedback" in feedback["content"] and "'42'" in feedback["content"]
    events = conn.execute("SELECT text, start, end, action FROM agent_events ORDER BY start").fetchall()
    content = "The answer is 42, as the Oracle of Delphi said."
    assert [(content[e["start"]:e["end"]], e["action"]) for e in events] == [
        ("42", "retry"), ("Oracle", "retry"), ("Delphi", "retry")]


def test_monitor_stop_policy_stops_the_run(tmp_path, server):
    config = AgentConfig()
    config.monitors.grounding = "stop"
    record, _ = run_agent(tmp_path, server, "invented_stop", "What is the answer?", [calculator], config)
    assert record.status == "stopped_by_monitor" and "'42'" in record.stop_reason


def test_client_retries_429_and_5xx_then_succeeds(server):
    client = OpenAIClient(server.base_url, "flaky", retry=RetryPolicy(max_attempts=3, base_delay_s=0.01))
    response = client.complete([{"role": "user", "content": "hi"}], logprobs=True)
    assert response.text == "survived"
    assert "".join(t.token for t in response.logprobs) == "survived"
    assert len(sent_requests(server, "flaky")) == 3


@pytest.mark.parametrize("form", ["with /v1", "host:port only", "trailing slash"])
def test_client_accepts_the_server_url_with_or_without_v1(server, form):
    root = server.base_url.removesuffix("/v1")
    url = {"with /v1": server.base_url, "host:port only": root, "trailing slash": root + "/"}[form]
    response = OpenAIClient(url, "hello", retry=RetryPolicy(max_attempts=1)).complete([{"role": "user", "content": "hi"}])
    assert response.text == "hello back"


def test_client_refuses_a_url_that_is_not_http():
    from lmstack.openai_url import OpenAIURLError

    with pytest.raises(OpenAIURLError, match="not an http"):
        OpenAIClient("127.0.0.1:8000", "hello")


def test_client_gives_up_and_the_run_fails_cleanly(tmp_path, server):
    config = AgentConfig(max_attempts=2)
    record, _ = run_agent(tmp_path, server, "broken", "hi", [calculator], config)
    assert record.status == "failed" and "500" in record.stop_reason


def test_per_call_timeout_is_retried(server):
    from lmstack.agent.client import ModelCallError

    client = OpenAIClient(server.base_url, "slow", timeout_s=0.3, retry=RetryPolicy(max_attempts=2, base_delay_s=0.01))
    with pytest.raises(ModelCallError, match="timed out"):
        client.complete([{"role": "user", "content": "hi"}])
    assert len(sent_requests(server, "slow")) == 2


def test_wall_time_budget(tmp_path, server):
    config = AgentConfig()
    config.budget.max_wall_s = 0.0
    record, _ = run_agent(tmp_path, server, "long", "count", [calculator], config)
    assert record.status == "budget_exceeded" and record.stop_reason.startswith("wall time") and record.steps == 0


def test_self_consistency_samples_k_answers_and_flags_disagreement(tmp_path, server):
    config = AgentConfig()
    config.monitors.self_consistency = "flag"
    config.monitors.grounding = "off"
    record, conn = run_agent(tmp_path, server, "sampled", "What is the answer?", [calculator], config)
    assert record.status == "completed"
    sampled = [r for r in sent_requests(server, "sampled") if r["temperature"] > 0]
    assert len(sampled) == 3
    events = conn.execute("SELECT monitor, start, end, detail FROM agent_events").fetchall()
    assert [(e["monitor"], e["start"], e["end"]) for e in events] == [("self_consistency", 0, len("The answer is 417."))]
    assert "1 of 3" in events[0]["detail"]


@pytest.mark.parametrize("stream", [False, True])
def test_uncertainty_uses_the_endpoint_logprobs(tmp_path, server, stream):
    config = AgentConfig()
    config.monitors.grounding = "off"
    record, conn = run_agent(tmp_path, server, "guessing", "Revenue?", [calculator], config, stream=stream)
    events = conn.execute("SELECT monitor, text, start, end FROM agent_events").fetchall()
    assert [(e["monitor"], e["text"], e["start"], e["end"]) for e in events] == [("uncertainty", "9,120", 12, 17)]


def test_a_run_owned_by_a_live_process_cannot_be_resumed_twice(tmp_path, server):
    import socket
    import subprocess

    from lmstack.agent.launch import open_database
    from lmstack.agent.runtime import AgentRuntime
    from lmstack.agent.store import create_run
    from lmstack.agent.tools import ToolRegistry
    from lmstack.config import to_dict
    from lmstack.errors import LmstackError
    from lmstack.run_owner import process_start

    conn = open_database(tmp_path / "db")
    config = AgentConfig(model=server.base_url, model_name="flaky")
    create_run(conn, "busy", "hi", to_dict(config))
    other = subprocess.Popen(["sleep", "30"])
    try:
        conn.execute("UPDATE agent_runs SET owner_pid = ?, owner_host = ?, owner_start = ? WHERE id = 'busy'",
                     (other.pid, socket.gethostname(), process_start(other.pid)))
        runtime = AgentRuntime(conn, "busy", config, OpenAIClient(server.base_url, "flaky"), ToolRegistry([]), tmp_path)
        with pytest.raises(LmstackError, match=fr"being executed by process {other.pid}; .* \(kill {other.pid}\)"):
            runtime.run()
    finally:
        other.kill()
        other.wait()
    assert runtime.run().status in ("completed", "failed")  # the owner is gone: resuming is allowed again


def test_a_run_this_process_executes_cannot_be_executed_by_a_second_thread(tmp_path, server):
    """`claim_run` takes this process for the run's own executor; the second thread is refused all the same, the
    first one's run undisturbed, and once it is done the run can be executed again."""
    import threading

    from lmstack.agent.launch import open_database
    from lmstack.agent.runtime import AgentRuntime
    from lmstack.agent.store import create_run, get_run
    from lmstack.agent.tools import ToolRegistry
    from lmstack.config import to_dict
    from lmstack.errors import LmstackError

    conn = open_database(tmp_path / "db")
    config = AgentConfig(model=server.base_url, model_name="slow")  # its reply takes 1 s, the refusal milliseconds
    create_run(conn, "busy-here", "hi", to_dict(config))

    def runtime():
        return AgentRuntime(open_database(tmp_path / "db"), "busy-here", config,
                            OpenAIClient(server.base_url, "slow", timeout_s=10), ToolRegistry([]), tmp_path)

    asked_before = len(sent_requests(server, "slow"))
    first = runtime()
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(record=first.run()))
    thread.start()
    try:
        assert _wait(lambda: len(sent_requests(server, "slow")) > asked_before)  # the first is in its model call
        with pytest.raises(LmstackError, match="run 'busy-here' is being executed by another thread of this process"):
            runtime().run()
    finally:
        thread.join(10)
    assert outcome["record"].status == "completed" and get_run(conn, "busy-here").final_answer == "too late"
    assert len(sent_requests(server, "slow")) == asked_before + 1  # the second thread asked the model nothing
    assert runtime().run().status == "completed"  # released: a finished run is returned as it is


def _wait(condition, timeout_s: float = 5.0) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()
