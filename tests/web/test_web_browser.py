"""The dashboard in a real browser (Debian's chromium via Playwright) against a real `lmstack ui` process."""

from __future__ import annotations

import json
import time

import pytest

from lmstack.agent.launch import open_database, resume_run
from lmstack.agent.store import create_run, list_runs, update_run
from lmstack.db import transaction
from lmstack.evals.compare import compare_runs
from lmstack.evals.store import Store
from web_seed import CHAT_ANSWER, FLAGGED_ANSWER, SCRIPT, XSS, train_record, write_trace_steps

expect = pytest.importorskip("playwright.sync_api", reason="the playwright package (dev extra) is missing").expect
NOT_RUN = "() => window.__pwned === undefined"


def test_chat_streams_the_answer_with_logprob_colours(page, screenshot):
    page.goto("/#/chat")
    expect(page.locator("#model option")).to_have_count(len(SCRIPT["scripts"]))  # the scripted endpoint's models, through the proxy
    page.select_option("#model", "chat")
    page.check("#logprobs")
    page.fill("#chat-input", "Say hello")
    page.click("#send")
    answer = page.locator(".msg.assistant .content")
    expect(answer).to_have_text(CHAT_ANSWER)
    tokens = page.locator(".msg.assistant .tok")
    assert tokens.count() > 5  # one coloured span per streamed token, each with its logprob
    assert float(tokens.first.get_attribute("data-logprob")) == -0.05
    expect(page.locator(".msg.assistant .usage")).to_contain_text("completion tokens")
    screenshot(page, "chat")


def test_chat_shows_tool_calls_and_results_inline_as_text(page, screenshot):
    page.goto("/#/chat")
    expect(page.locator("#model option")).to_have_count(len(SCRIPT["scripts"]))
    page.select_option("#model", "chat-tools")
    page.fill("#tools", json.dumps([{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]))
    page.fill("#chat-input", "Weather in Oslo?")
    page.click("#send")
    call = page.locator(".msg.assistant .toolcall")
    expect(call).to_contain_text("get_weather")
    expect(call).to_contain_text('{"city": "Oslo"}')
    page.fill(".tool-result-input", XSS)
    page.click(".send-tool-result")
    expect(page.locator(".msg.tool .content")).to_have_text(XSS)  # shown as text, not as markup
    expect(page.locator(".msg.assistant .content").last).to_have_text("It is 12 °C in Oslo.")
    assert page.locator("#messages script, #messages img").count() == 0
    assert page.evaluate(NOT_RUN)
    screenshot(page, "chat-tools")


def test_training_run_curves_follow_a_live_run(page, seeded, screenshot):
    page.goto("/#/training")
    page.click("#training-runs >> text=tiny")
    train = page.locator("#training-charts polyline.series-train")
    expect(train).to_have_attribute("data-points", "60")
    expect(page.locator("#training-charts polyline.series-val")).to_have_attribute("data-points", "3")
    expect(page.locator("#training-samples .sample").first).to_contain_text("def sample_at_60(x):")
    # The run keeps training: new metric lines appear on the open page without a reload.
    with open(seeded["training_dir"] / "metrics.jsonl", "a") as metrics:
        for step in range(61, 81):
            metrics.write(json.dumps(train_record(step)) + "\n")
    expect(train).to_have_attribute("data-points", "80", timeout=10_000)
    expect(page.locator("h2")).to_contain_text("step 80")
    for title in ("tokens per second", "MFU"):
        expect(page.locator(f"svg[aria-label='{title}'] polyline")).to_have_attribute("data-points", "80")
    screenshot(page, "training")


def test_agent_trace_highlights_the_flagged_span_and_never_runs_tool_output(page, seeded, screenshot):
    events = seeded["agents"]["events"]
    grounding = next(e for e in events if e["monitor"] == "grounding")
    page.goto("/#/agents/flagged-run")
    expect(page.locator("#run-overview")).to_contain_text("done")
    mark = page.locator("mark.flag[data-monitor~='grounding']")
    expect(mark).to_have_count(1)
    # The marked characters are exactly the span the monitor recorded.
    assert mark.inner_text() == grounding["text"] == "".join(list(FLAGGED_ANSWER)[grounding["start"]:grounding["end"]])
    expect(page.locator(".message").last).to_have_text(FLAGGED_ANSWER)
    expect(page.locator(".tool-output")).to_have_text(XSS)
    assert page.locator("#trace script, #trace img").count() == 0
    assert page.evaluate(NOT_RUN)
    screenshot(page, "agent-trace")


def test_agent_list_pages_through_a_thousand_runs(page, seeded, screenshot):
    conn = open_database(seeded["db"])  # the counts as the agent store has them (other tests add runs)
    total = len(list_runs(conn, limit=10**6))
    waiting = len(list_runs(conn, "waiting", limit=10**6))
    assert total > 1000
    started = time.perf_counter()
    page.goto("/#/agents")
    rows = page.locator("#agent-runs tr.clickable")
    expect(rows).to_have_count(50)
    expect(page.locator("#agent-runs .pager")).to_contain_text(f"1–50 of {total}")
    page.click("#agent-runs >> text=next ›")
    expect(page.locator("#agent-runs .pager")).to_contain_text(f"51–100 of {total}")
    page.click(".filters >> text=waiting for approval")
    expect(rows).to_have_count(waiting)
    expect(page.locator("#agent-runs tr[data-run='approval-run']")).to_be_visible()
    assert time.perf_counter() - started < 10
    page.click(".filters >> text=all")
    screenshot(page, "agents")


def test_agent_trace_of_500_steps_loads_lazily(page):
    page.goto("/#/agents/long-trace")
    steps = page.locator("#trace .step")
    expect(steps).to_have_count(20)
    for expected in (40, 60):  # scrolling to the end of the trace fetches the next page
        page.locator("#load-more").scroll_into_view_if_needed()
        expect(steps).to_have_count(expected)
    # The page stays responsive: a script round trip is immediate.
    started = time.perf_counter()
    assert page.evaluate("() => document.querySelectorAll('#trace .step').length") == 60
    assert time.perf_counter() - started < 1
    expect(page.locator("#trace .step[data-step='59']")).to_contain_text("Step 59: looking at item 59.")


def test_a_running_agent_run_shows_each_new_step_on_the_open_page(page, seeded):
    """Opened before its first step, the trace says so; then the steps appear as the run writes them."""
    conn = open_database(seeded["db"])
    create_run(conn, "live-run", "a task still running", {"model": "scripted", "tools": ["echo"]})
    update_run(conn, "live-run", status="running")
    page.goto("/#/agents/live-run")
    expect(page.locator("#trace")).to_have_text("No steps recorded yet.")
    expect(page.locator("#load-more")).to_be_hidden()
    for written in (range(0, 2), range(2, 5)):  # the run's status stays "running" throughout
        with transaction(conn):
            write_trace_steps(conn, "live-run", written)
        expect(page.locator("#trace .step")).to_have_count(written.stop)
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # following the end of the trace
    expect(page.locator("#trace .step[data-step='4']")).to_contain_text("Step 4: looking at item 4.")
    conn.close()


def test_approving_a_waiting_tool_call_resumes_the_run(page, screenshot):
    page.goto("/#/agents/approval-run")
    approval = page.locator(".approval[data-call='step0/tool0']")
    expect(approval).to_contain_text("guarded_echo")
    screenshot(page, "agent-approval")
    approval.locator("text=Approve").click()
    expect(page.locator("#run-overview")).to_contain_text("Shipped.", timeout=20_000)
    expect(page.locator("#run-overview .badge")).to_have_text("done")
    expect(page.locator(".tool-output")).to_have_text("approved: ship it")


def test_a_failed_run_resumed_from_the_cli_updates_its_open_page(page, seeded):
    """The page stopped following a failed run, which `lmstack agent resume` can now continue."""
    run_id = seeded["agents"]["failed"]
    page.goto(f"/#/agents/{run_id}")
    expect(page.locator("#run-overview .badge")).to_have_text("failed")
    resumed = resume_run(open_database(seeded["db"]), run_id)
    assert resumed.status == "completed"
    expect(page.locator("#run-overview .badge")).to_have_text("done", timeout=20_000)
    expect(page.locator("#run-overview")).to_contain_text("Back again.")


def test_rejecting_a_waiting_tool_call_resumes_the_run_without_it(page):
    page.goto("/#/agents/reject-run")
    page.locator(".approval[data-call='step0/tool0'] >> text=Reject").click()
    expect(page.locator("#run-overview .badge")).to_have_text("done", timeout=20_000)
    expect(page.locator(".tool-output")).to_contain_text("a human denied this call")
    expect(page.locator("#approvals")).to_be_empty()


def test_eval_run_drills_down_into_a_sample_transcript(page):
    page.goto("/#/evals/run/eval-a")
    expect(page.locator("#eval-samples tr.clickable")).to_have_count(40)
    page.click("#eval-samples tr[data-sample='q4']")
    transcript = page.locator("#transcript")
    expect(transcript.locator(".sample-output")).to_have_text("The answer is 12.")
    expect(transcript.locator(".msg.user .content")).to_have_text("What is 4 plus 7?")
    expect(transcript).to_contain_text("match: 0")


def test_an_eval_run_whose_process_died_shows_interrupted_how_to_resume_and_its_partial_scores(page, seeded):
    run_id = seeded["interrupted_eval"]
    page.goto("/#/evals")
    row = page.locator(f"#eval-runs tr[data-run='{run_id}']")
    expect(row.locator(".badge")).to_have_text("interrupted")
    # The scores of the 2 samples it has (one right), not "no scores".
    expect(row.locator(".partial")).to_have_text("partial: 2/5 samples, interrupted")
    expect(row).to_contain_text("match (mean): 0.500")
    page.goto(f"/#/evals/run/{run_id}")
    expect(page.locator(".run-error")).to_contain_text(f"ended without finishing the run: killed, or the machine "
                                                       f"went down; continue it with --resume {run_id}")
    expect(page.locator(".card .partial")).to_have_text("partial: 2/5 samples, interrupted")


def test_eval_runs_compare_with_paired_test_and_flips(page, seeded, screenshot):
    expected = compare_runs(Store(seeded["db"]), "eval-a", "eval-b").scorers[0]
    page.goto("/#/evals")
    expect(page.locator("#eval-runs tr[data-run='eval-a']")).to_contain_text("match (mean): 0.750")
    screenshot(page, "evals")
    page.check("#eval-runs tr[data-run='eval-a'] input[name='run-a']")
    page.check("#eval-runs tr[data-run='eval-b'] input[name='run-b']")
    page.click("#compare")
    row = page.locator("#comparison tr[data-scorer='match']")
    expect(row).to_contain_text("mcnemar")
    expect(row.locator(".p-value")).to_have_text(f"{expected.p_value:.4f}")
    expect(row).to_contain_text("improvement" if expected.improvement else "no significant change")
    flips = page.locator("#comparison tr.flip")
    expect(flips).to_have_count(len(expected.flips))
    page.click("#comparison tr.flip[data-sample='q1']")
    expect(page.locator("#transcript-a .sample-output")).to_have_text("The answer is 5.")
    expect(page.locator("#transcript-b .sample-output")).to_have_text("The answer is 6.")
    screenshot(page, "eval-compare")


def test_the_page_asks_for_the_api_key(browser, ui_server):
    context = browser.new_context(base_url=ui_server)
    page = context.new_page()
    page.goto("/#/evals")
    expect(page.locator("#key-form")).to_be_visible()
    page.fill("#api-key", "dashboard-test-key")
    page.click("#key-form button")
    expect(page.locator("#eval-runs tr[data-run='eval-b']")).to_be_visible()
    context.close()
