"""Long-term memory (FTS5/BM25, embeddings, scopes, staleness) and the context-window policy."""

import re
import zlib

import numpy as np

from lmstack.agent.context import approx_tokens, fit_context
from lmstack.agent.memory import MemoryStore
from lmstack.db import connect

SCOPE = ("assistant", "alice")


def test_bm25_ranks_the_matching_fact_first_and_scopes_are_separate(tmp_path):
    store = MemoryStore(connect(tmp_path / "m.db"))
    store.save("Alice lives in Lisbon and works as a nurse.", SCOPE)
    store.save("Alice's favourite drink is green tea.", SCOPE)
    store.save("The office wifi password rotates monthly.", SCOPE)
    store.save("Bob lives in Oslo.", ("assistant", "bob"))
    found = store.search("where does she live", SCOPE)
    assert found[0].text == "Alice lives in Lisbon and works as a nurse."
    assert all("Bob" not in m.text for m in found)
    assert store.search("tea drink", SCOPE)[0].text == "Alice's favourite drink is green tea."
    assert store.search("!!!", SCOPE) == []


def test_a_fact_saved_under_the_same_key_replaces_the_old_one_and_stale_facts_are_listed(tmp_path):
    conn = connect(tmp_path / "m.db")
    store = MemoryStore(conn)
    old = store.save("Alice lives in Lisbon.", SCOPE, key="alice.city")
    conn.execute("UPDATE memories SET created_at = created_at - 86400 * 90, updated_at = updated_at - 86400 * 90 "
                 "WHERE id = ?", (old,))
    assert [m.id for m in store.stale(SCOPE, older_than_s=86400 * 30)] == [old]
    store.save("Alice lives in Porto.", SCOPE, key="alice.city")
    assert [m.text for m in store.search("Alice lives", SCOPE)] == ["Alice lives in Porto."]
    assert store.stale(SCOPE, older_than_s=86400 * 30) == []
    assert conn.execute("SELECT superseded_by IS NOT NULL FROM memories WHERE id = ?", (old,)).fetchone()[0] == 1


def hashed_bag_of_words(text: str, dims: int = 64) -> np.ndarray:
    vector = np.zeros(dims, dtype=np.float32)
    for word in re.findall(r"\w+", text.lower()):
        vector[zlib.crc32(word[:4].encode()) % dims] += 1  # 4-letter stems: "cats" ~ "cat"
    return vector


def test_embeddings_find_a_fact_that_shares_no_exact_word(tmp_path):
    store = MemoryStore(connect(tmp_path / "m.db"), embed=hashed_bag_of_words)
    store.save("The user adores cats.", SCOPE)
    store.save("The quarterly report is due Friday.", SCOPE)
    # BM25 alone finds nothing for "catlike" (no shared token); the stem-embedding does.
    assert MemoryStore(store.conn).search("catlike", SCOPE) == []
    assert store.search("catlike", SCOPE)[0].text == "The user adores cats."


def conversation(tool_output_chars: int, turns: int) -> list[dict]:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Research the topic."}]
    for i in range(turns):
        messages.append({"role": "assistant", "content": f"Step {i}. Looking it up.",
                         "tool_calls": [{"id": f"c{i}", "type": "function",
                                         "function": {"name": "search", "arguments": "{}"}}]})
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": f"result {i} " + "x" * tool_output_chars})
    return messages


def test_context_policy_truncates_oldest_tool_outputs_first():
    messages = conversation(tool_output_chars=2000, turns=4)
    view = fit_context(messages, max_tokens=1200)
    assert approx_tokens(view) <= 1200
    assert "[tool output truncated" in view[3]["content"] and view[-1] == messages[-1]
    assert len(view) == len(messages) and messages[3]["content"].endswith("x")  # stored history untouched


def test_context_policy_summarises_oldest_turns_when_truncation_is_not_enough():
    messages = conversation(tool_output_chars=100, turns=30)
    view = fit_context(messages, max_tokens=500)
    assert approx_tokens(view) <= 500
    assert view[0] == messages[0] and view[-1] == messages[-1]
    # The summary rides on the task message, so user and assistant messages still alternate.
    task = view[1]["content"]
    assert view[1]["role"] == "user" and task.startswith(messages[1]["content"] + "\n\nSummary of earlier conversation")
    assert "earlier messages omitted" in task
    assert not any(a["role"] == b["role"] == "user" for a, b in zip(view, view[1:]))
    # No tool result is left without the assistant message that called it.
    first_kept = view[2]
    assert first_kept["role"] == "assistant"


def answered_calls_only(view: list[dict]) -> bool:
    """Every tool result answers a call made by an assistant message earlier in the view."""
    called: set[str] = set()
    for message in view:
        called.update(c["id"] for c in message.get("tool_calls", []))
        if message["role"] == "tool" and message["tool_call_id"] not in called:
            return False
    return True


def test_dropping_turns_keeps_the_latest_call_with_all_its_results():
    messages = conversation(tool_output_chars=100, turns=6)
    messages[-2]["tool_calls"].append({"id": "c5b", "type": "function", "function": {"name": "search", "arguments": "{}"}})
    messages.append({"role": "tool", "tool_call_id": "c5b", "content": "second result " + "y" * 100})
    # Room for the head and the whole latest turn (~131 tokens), not with a bare summary too (~160): the old rule
    # dropped the call and sent its last result alone (~77 with the summary), which OpenAI's API refuses. A turn is
    # whole or gone; the latest stays, and the summary gives way.
    view = fit_context(messages, max_tokens=140)
    assert view == messages[:2] + messages[-3:] and answered_calls_only(view)



def test_a_latest_turn_that_cannot_fit_goes_into_the_summary_as_text():
    # What a small model's context gives (its tool schemas fill most of it): the one turn there is (53 tokens)
    # does not fit in 50, and its output is too short to cut. Its result is kept as a line of the summary; no
    # tool message is left.
    messages = conversation(tool_output_chars=2, turns=1)
    assert fit_context(messages, max_tokens=53) == messages
    view = fit_context(messages, max_tokens=50)
    assert approx_tokens(view) <= 50 and [m["role"] for m in view] == ["system", "user"]
    assert view[1]["content"].endswith("- tool: result 0 xx")


def test_a_latest_tool_output_too_long_for_the_context_is_shortened_last():
    messages = conversation(tool_output_chars=100, turns=3)
    messages[-1] = dict(messages[-1], content="huge " + "z" * 8000)  # ~2,000 tokens, more than the whole context
    view = fit_context(messages, max_tokens=300)
    # Only the output that could never fit is cut: the older turns, which fit beside it once cut, all stay.
    assert view[:-1] == messages[:-1] and answered_calls_only(view) and approx_tokens(view) <= 300
    # 200 characters in all: a 51-character note (for up to 4 digits cut) leaves 149 = a head of 75 and a tail of 74.
    assert view[-1]["content"] == "huge " + "z" * 70 + "\n[tool output truncated: 7856 characters cut here]\n" + "z" * 74


def test_summary_handles_content_given_as_a_list_of_parts():
    messages = conversation(tool_output_chars=100, turns=8)
    messages[1] = {"role": "user", "content": [{"type": "text", "text": "Research "}, {"type": "text", "text": "it."}]}
    messages[6] = dict(messages[6], content=[{"type": "text", "text": "Parted step. More."}])  # the third turn
    view = fit_context(messages, max_tokens=400)
    assert approx_tokens(view) <= 400
    assert view[1]["content"].startswith("Research it.\n\nSummary of earlier conversation")
    assert "- assistant: Parted step. [called search]" in view[1]["content"]
    assert messages[1]["content"][0]["text"] == "Research "  # stored history untouched
