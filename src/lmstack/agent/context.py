"""Keep the conversation sent to the model within its context window.

Policy, cheapest loss first: (1) shorten tool outputs, oldest first, to a head and a tail around a note
of what was cut; (2) if still too long, replace the oldest turns (never the system prompt, the task, or the
latest turn) with one extractive summary, appended to the task message (shortened as needed, or left
out when not even a count of the dropped messages fits); (3) if even that is too long, let the latest turn
take part of the room kept for the reply (`stretch_tokens`: the model's next move depends on the call it just
made and its result, which a smaller reply room still leaves it); (4) then shorten the latest turn's tool outputs
too (first of all when the latest turn cannot fit even alone); (5) failing that, summarise the latest turn as
well. A turn is a message with the tool results that answer it:
it is kept or dropped whole, since a tool result without the call it answers is refused by OpenAI's
API. The stored conversation is never changed; this builds the view sent on each call,
deterministically, so a replayed run sends the same requests.
"""

from __future__ import annotations

import json
import re
from typing import Callable

from lmstack.tokenizer import content_text

KEEP_TOOL_CHARS = 200


def cut_middle(text: str, max_chars: int) -> str:
    """`text` if it has at most `max_chars` characters, else its head and tail around a note of how many were cut,
    at most `max_chars` in all, so cutting it again changes nothing (when `max_chars` is shorter than the note, the
    note alone, which is longer; AgentConfig never asks for so little).
    The middle goes since a program's output says what it is at its start and how it ended (an error) at its end."""
    if len(text) <= max_chars:
        return text
    room = max(0, max_chars - len(_cut_note(len(text))))  # what is cut is at most len(text): its note at most this long
    tail = room // 2
    return f"{text[:room - tail]}{_cut_note(len(text) - room)}{text[len(text) - tail:]}"


def _cut_note(cut_chars: int) -> str:
    return f"\n[tool output truncated: {cut_chars} characters cut here]\n"


def approx_tokens(messages: list[dict]) -> int:
    """~4 characters per token, plus a few per message for the template's role markers."""
    return sum(len(json.dumps(m.get("content") or "")) // 4 + len(json.dumps(m.get("tool_calls", ""))) // 4 + 4
               for m in messages)


def fit_context(messages: list[dict], max_tokens: int,
                count_tokens: Callable[[list[dict]], int] = approx_tokens, stretch_tokens: int = 0) -> list[dict]:
    """The view of `messages` to send: at most `max_tokens` when the older history can give way, else up to
    `max_tokens + stretch_tokens` to keep the latest turn whole (the caller's reply room shrinks by as much)."""
    view = [dict(m) for m in messages]
    if count_tokens(view) <= max_tokens:
        return view
    head = [m for m in view[:2] if m["role"] in ("system", "user")]  # system prompt and the task
    turns = _turns(view[len(head):])
    older = [m for turn in turns[:-1] for m in turn]
    if _shorten_tool_outputs(view, older, max_tokens, count_tokens):
        return view
    latest = turns[-1] if turns else []
    most = max_tokens + max(0, stretch_tokens)
    # A latest turn that cannot fit even alone (a huge tool output) must lose its long outputs anyway: cut them
    # now, before dropping older turns that may then fit.
    if count_tokens(head + latest) > most and _shorten_tool_outputs(view, latest, max_tokens, count_tokens):
        return view
    view, fits = _summarise_oldest(head, turns, max_tokens, count_tokens)
    if fits or not turns:
        return view
    if most > max_tokens:  # the latest turn, whole, beside what is left of the older ones, in the stretched room
        view, fits = (_with_summary(head, older, latest, most, count_tokens) if older
                      else (head + latest, count_tokens(head + latest) <= most))
        if fits:
            return view
    # The latest turn overflows beside the summary: its long outputs are better shortened than refused by the server.
    if _shorten_tool_outputs(view, view[len(view) - len(latest):], most, count_tokens):
        return view
    # Last resort (a small model whose tool schemas fill most of its context): the latest turn goes into the summary
    # too, its calls and results as lines of text, which every API accepts and which is as short as it gets.
    return _with_summary(head, [m for turn in turns for m in turn], [], most, count_tokens)[0]


def _turns(body: list[dict]) -> list[list[dict]]:
    """Messages grouped into turns: each message with the tool results that follow it."""
    turns: list[list[dict]] = []
    for message in body:
        if message["role"] == "tool" and turns:
            turns[-1].append(message)
        else:
            turns.append([message])
    return turns


def _shorten_tool_outputs(view: list[dict], candidates: list[dict], max_tokens: int,
                          count_tokens: Callable[[list[dict]], int]) -> bool:
    """Shorten the long tool outputs among `candidates` (messages of `view`), in order, until the view fits."""
    for message in candidates:
        content = content_text(message.get("content"))
        if message["role"] == "tool" and len(content) > KEEP_TOOL_CHARS:
            message["content"] = cut_middle(content, KEEP_TOOL_CHARS)
            if count_tokens(view) <= max_tokens:
                return True
    return False


def _summarise_oldest(head: list[dict], turns: list[list[dict]], max_tokens: int,
                      count_tokens: Callable[[list[dict]], int]) -> tuple[list[dict], bool]:
    """Drop whole turns, oldest first, for a summary, until the view fits or only the latest turn is left."""
    dropped: list[dict] = []
    candidate, fits = head + [m for turn in turns for m in turn], False
    for kept in range(1, len(turns)):
        dropped += turns[kept - 1]
        candidate, fits = _with_summary(head, dropped, [m for turn in turns[kept:] for m in turn], max_tokens,
                                        count_tokens)
        if fits:
            break
    return candidate, fits


def _with_summary(head: list[dict], dropped: list[dict], body: list[dict], max_tokens: int,
                  count_tokens: Callable[[list[dict]], int]) -> tuple[list[dict], bool]:
    """head + summary + body and whether it fits: the summary halved until the whole fits (a tokenizer may need
    far more than the assumed 4 characters per token), down to a bare count of what was dropped, and to no summary
    when even that does not fit (on a small model the turns left matter more than a note of what is gone). When
    the bare count does not fit, no longer summary will: that is known after one count, not one per halving."""
    bare = _attach_summary(head, _summary_text(dropped, 0)) + body
    if count_tokens(bare) > max_tokens:
        without = [dict(m) for m in head] + body
        return without, count_tokens(without) <= max_tokens
    budget_chars = max_tokens  # a quarter of the context at ~4 characters per token
    while budget_chars > 0:
        candidate = _attach_summary(head, _summary_text(dropped, budget_chars)) + body
        if count_tokens(candidate) <= max_tokens:
            return candidate, True
        budget_chars //= 2
    return bare, True


def _attach_summary(head: list[dict], summary: str) -> list[dict]:
    """The summary goes into the task message (else the system prompt), not in a message of its own:
    chat templates that require user/assistant alternation reject two user messages in a row."""
    head = [dict(m) for m in head]
    target = next((m for m in reversed(head) if m["role"] == "user"), head[-1] if head else None)
    if target is None:
        return [{"role": "user", "content": summary}]
    task = content_text(target.get("content")).rstrip()
    target["content"] = f"{task}\n\n{summary}" if task else summary
    return head


def _summary_text(dropped: list[dict], budget_chars: int) -> str:
    """One line per dropped message, newest kept first, within `budget_chars`."""
    lines: list[str] = []
    for m in reversed(dropped):
        text = content_text(m.get("content")).strip()
        first_sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0][:160] if text else ""
        calls = ", ".join(c["function"]["name"] for c in m.get("tool_calls", []))
        line = f"- {m['role']}: {first_sentence}" + (f" [called {calls}]" if calls else "")
        if sum(len(x) for x in lines) + len(line) > budget_chars:
            lines.append(f"- ({len(dropped) - len(lines)} earlier messages omitted)")
            break
        lines.append(line)
    return "Summary of earlier conversation (older turns were shortened to fit the context):\n" + "\n".join(
        reversed(lines))
