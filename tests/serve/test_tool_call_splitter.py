"""Streaming tool-call parsing agrees with the tokenizer's own parse of the whole text, however it is cut."""

import json
import random

import pytest

from lmstack.serve.tool_calls import ToolCallSplitter, merge_deltas

CALL_A = '<|tool_call|>{"name": "get_weather", "arguments": {"city": "Oslo <|"}}<|/tool_call|>'
CALL_B = '<|tool_call|>{"name": "get_time", "arguments": {}}<|/tool_call|>'
TEXTS = ["plain text with <| and |> but no call", "Let me check. " + CALL_A, CALL_A + CALL_B, CALL_B + " trailing"]


def split_randomly(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), k=min(8, len(text) - 1)))
    return [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_pieces_merge_to_the_tokenizers_parse(tokenizer, text):
    content, calls = tokenizer.parse_assistant(text)  # the chat template's own parser is the reference
    for seed in range(20):
        splitter = ToolCallSplitter()
        deltas = [d for piece in split_randomly(text, random.Random(seed)) for d in splitter.feed(piece)]
        merged_content, merged_calls = merge_deltas(deltas + splitter.finish())
        assert (merged_content or "") == content
        assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in merged_calls] == \
               [(c.name, c.arguments) for c in calls]
        assert all(c["id"].startswith("call_") for c in merged_calls)
        heads = [d["tool_calls"][0] for d in deltas if "tool_calls" in d and "id" in d["tool_calls"][0]]
        assert all(h["type"] == "function" and h["function"]["name"] for h in heads)  # the first delta names it


def test_a_malformed_or_unclosed_call_stays_in_the_content():
    for text in ['<|tool_call|>{"name": oops}<|/tool_call|>', 'hi <|tool_call|>{"name": "f"']:
        splitter = ToolCallSplitter()
        content, calls = merge_deltas(splitter.feed(text) + splitter.finish())
        assert calls == [] and content == text


def test_without_tools_everything_is_content():
    splitter = ToolCallSplitter(parse_calls=False)
    assert merge_deltas(splitter.feed(CALL_A) + splitter.finish()) == (CALL_A, [])
