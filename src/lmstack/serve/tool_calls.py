"""Split generated assistant text into content and OpenAI tool calls, as it streams.

The chat template writes a call as <|tool_call|>{"name": ..., "arguments": {...}}<|/tool_call|>.
Text outside the markers is content, sent as soon as it cannot be the start of a marker; a call is
sent once it is closed and parses, as two deltas (id, type and name first, then the arguments), the
way OpenAI streams them. A call that does not parse stays in the content, so nothing is lost.
The non-streaming path feeds the whole text at once and merges the same deltas.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from lmstack.tokenizer import TOOL_CALL_END, TOOL_CALL_START, parse_tool_call

Delta = dict[str, Any]


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


class ToolCallSplitter:
    def __init__(self, parse_calls: bool = True):
        self.parse_calls = parse_calls  # False (tool_choice none, or no tools): all text is content
        self.pending = ""
        self.in_call = False
        self.num_calls = 0

    def feed(self, text: str) -> list[Delta]:
        if not self.parse_calls:
            return [{"content": text}] if text else []
        self.pending += text
        deltas: list[Delta] = []
        while True:
            if not self.in_call:
                start = self.pending.find(TOOL_CALL_START)
                if start < 0:
                    keep = _marker_prefix_length(self.pending, TOOL_CALL_START)
                    _content(deltas, self.pending[:len(self.pending) - keep])
                    self.pending = self.pending[len(self.pending) - keep:]
                    return deltas
                _content(deltas, self.pending[:start])
                self.pending, self.in_call = self.pending[start + len(TOOL_CALL_START):], True
            end = self.pending.find(TOOL_CALL_END)
            if end < 0:
                return deltas
            raw, self.pending, self.in_call = self.pending[:end], self.pending[end + len(TOOL_CALL_END):], False
            deltas += self._call(raw)

    def finish(self) -> list[Delta]:
        """The held-back text at the end of the turn (an unclosed call is content)."""
        rest = (TOOL_CALL_START if self.in_call else "") + self.pending
        self.pending, self.in_call = "", False
        deltas: list[Delta] = []
        _content(deltas, rest)
        return deltas

    def _call(self, raw: str) -> list[Delta]:
        call = parse_tool_call(raw.strip())
        if call.error:
            return [{"content": TOOL_CALL_START + raw + TOOL_CALL_END}]
        index, self.num_calls = self.num_calls, self.num_calls + 1
        head = {"index": index, "id": new_call_id(), "type": "function", "function": {"name": call.name, "arguments": ""}}
        body = {"index": index, "function": {"arguments": json.dumps(call.arguments, ensure_ascii=False)}}
        return [{"tool_calls": [head]}, {"tool_calls": [body]}]


def merge_deltas(deltas: list[Delta]) -> tuple[str | None, list[dict[str, Any]]]:
    """Deltas -> (content or None, complete tool calls), as a non-streamed message carries them."""
    content = "".join(d.get("content", "") for d in deltas)
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        for part in delta.get("tool_calls", []):
            call = calls.setdefault(part["index"], {"id": None, "type": "function",
                                                    "function": {"name": None, "arguments": ""}})
            call["id"] = part.get("id") or call["id"]
            call["function"]["name"] = part["function"].get("name") or call["function"]["name"]
            call["function"]["arguments"] += part["function"].get("arguments", "")
    content = content.strip() if calls else content
    return (content or None) if calls else content, [calls[i] for i in sorted(calls)]


def _content(deltas: list[Delta], text: str) -> None:
    if text:
        deltas.append({"content": text})


def _marker_prefix_length(text: str, marker: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `marker` (it may be a marker's start)."""
    for length in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-length:]):
            return length
    return 0
