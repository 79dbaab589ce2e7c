"""`lmstack serve` mounts the dashboard at `/`: its JSON API behind the server's API key, and the chat
tab streaming from the served model itself (a tiny random model from the server tests' helpers)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))  # the server tests' checkpoint helpers
from serve_helpers import make_checkpoint, running_server  # noqa: E402

KEY = "serve-dashboard-key"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with running_server(make_checkpoint(tmp_path_factory.mktemp("web-serve") / "tiny-chat"), "--api-key", KEY) as (base, _):
        yield base


def test_serve_mounts_the_dashboard_behind_its_api_key(served):
    assert "<title>lmstack dashboard</title>" in httpx.get(f"{served}/").text
    assert httpx.get(f"{served}/api/endpoints").status_code == 401
    endpoints = httpx.get(f"{served}/api/endpoints", headers={"authorization": f"Bearer {KEY}"}).json()["endpoints"]
    assert endpoints == [{"id": "local", "label": "this server", "base": "/v1"}]


def test_chat_tab_streams_from_the_served_model(browser, served, screenshot):
    expect = pytest.importorskip("playwright.sync_api").expect
    context = browser.new_context(base_url=served, viewport={"width": 1360, "height": 900})
    context.add_init_script(f"localStorage.setItem('lmstack.apiKey', '{KEY}')")
    page = context.new_page()
    page.goto("/#/chat")
    expect(page.locator("#model option")).to_have_text(["tiny-chat"])
    page.fill("#max_tokens", "12")
    page.fill("#seed", "1")
    page.check("#logprobs")
    page.fill("#chat-input", "hello")
    page.click("#send")
    usage = page.locator(".msg.assistant .usage")
    expect(usage).to_contain_text("completion tokens", timeout=30_000)
    completion_tokens = int(usage.inner_text().split("+ ")[1].split()[0])
    # Coloured spans for the streamed tokens, each with the engine's logprob (<= 0).
    logprobs = [float(v) for v in page.locator(".msg.assistant .tok").evaluate_all(
        "spans => spans.map(s => s.dataset.logprob)")]
    assert 1 <= len(logprobs) <= completion_tokens <= 12
    assert all(lp <= 0 for lp in logprobs)
    screenshot(page, "chat-served-model")
    context.close()
