"""Chat data: the loss mask token by token, truncation at turn boundaries, packing without leaks,
and bad records skipped with a counted, located warning."""

import json

import pytest
import torch

from lmstack.tokenizer import ASSISTANT, END, SYSTEM, TOOL, TOOL_CALL_END, TOOL_CALL_START, USER
from lmstack.train.chat_data import (ChatDataError, Example, PackedChatLoader, collate, load_chat_examples,
                                     pack_windows, truncate)

CALL = {"name": "calculator", "arguments": {"expression": "2 + 3"}}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": json.dumps(CALL["arguments"])}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "5"},
    {"role": "assistant", "content": "It is 5."},
]


def expected_ids_and_mask(tok):
    """The documented template built piece by piece, with the trained pieces written down by hand."""
    s = tok.special
    pieces = [
        ([tok.bos_id, s[SYSTEM]], 0), (tok.encode("Be brief."), 0), ([s[END]], 0),
        ([s[USER]], 0), (tok.encode("What is 2 + 3?"), 0), ([s[END]], 0),
        ([s[ASSISTANT]], 0),  # the role token is the prompt: the model never has to predict it
        ([s[TOOL_CALL_START]], 1), (tok.encode(json.dumps(CALL)), 1), ([s[TOOL_CALL_END], s[END]], 1),
        ([s[TOOL]], 0), (tok.encode("5"), 0), ([s[END]], 0),
        ([s[ASSISTANT]], 0), (tok.encode("It is 5."), 1), ([s[END]], 1),
    ]
    return [i for ids, _ in pieces for i in ids], [m for ids, m in pieces for _ in ids]


def test_loss_mask_trains_only_assistant_tokens(chat_tokenizer):
    rendered = chat_tokenizer.render(CONVERSATION)
    ids, mask = expected_ids_and_mask(chat_tokenizer)
    assert rendered.ids == ids
    assert rendered.loss_mask == mask
    # next-token targets: position t is trained iff token t + 1 is assistant output
    batch = collate([Example(rendered.ids, rendered.loss_mask)], [[0]], len(ids) - 1, pad_id=0)
    for t in range(len(ids) - 1):
        assert batch.targets[0, t].item() == (ids[t + 1] if mask[t + 1] else -1)


def test_truncation_keeps_whole_turns_and_never_cuts_a_tool_call(chat_tokenizer):
    rendered = chat_tokenizer.render(CONVERSATION)
    first_assistant_end = rendered.spans[2][2]
    for limit in range(first_assistant_end, len(rendered.ids)):
        ids, mask = truncate(rendered.ids, rendered.loss_mask, rendered.spans, limit)
        assert len(ids) == first_assistant_end  # the tool turn and the last answer do not fit
        text = chat_tokenizer.decode(ids)
        assert text.count(TOOL_CALL_START) == text.count(TOOL_CALL_END) and text.endswith(END)
    assert truncate(rendered.ids, rendered.loss_mask, rendered.spans, first_assistant_end - 1) is None
    assert truncate(rendered.ids, rendered.loss_mask, rendered.spans, 10_000)[0] == rendered.ids


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_window_logits_equal_each_conversation_alone(chat_tokenizer, make_model, arch):
    model = make_model(chat_tokenizer, arch=arch).eval()
    conversations = [CONVERSATION, CONVERSATION[1:3], [{"role": "user", "content": "Hi"},
                                                      {"role": "assistant", "content": "Hello!"}]]
    examples = [Example(r.ids, r.loss_mask) for r in (chat_tokenizer.render(c) for c in conversations)]
    seq_len = sum(len(e.ids) - 1 for e in examples) + 7  # all three plus some padding in one window
    windows = pack_windows(examples, seq_len)
    assert len(windows) == 1
    batch = collate(examples, windows, seq_len, pad_id=chat_tokenizer.special["<|pad|>"])
    with torch.no_grad():
        packed, _ = model(batch.inputs, positions=batch.positions, attn_mask=batch.attn_mask)
        at = 0
        for index in windows[0]:
            alone, _ = model(torch.tensor([examples[index].ids[:-1]]))
            n = alone.size(1)
            torch.testing.assert_close(packed[0, at:at + n], alone[0], rtol=1e-5, atol=1e-5)
            at += n
    assert torch.isfinite(packed).all()  # padding rows attend to themselves, never to nothing


def test_packing_fills_windows_and_loader_resumes(chat_tokenizer):
    examples = [Example(list(range(n)), [1] * n) for n in [60, 50, 40, 30, 20, 10, 70, 65]]
    windows = pack_windows(examples, 128)
    assert sorted(i for w in windows for i in w) == list(range(len(examples)))
    assert all(sum(len(examples[i].ids) - 1 for i in w) <= 128 for w in windows)
    loader = PackedChatLoader(examples, batch_size=2, seq_len=128, pad_id=0, seed=1)
    assert loader.fill > 0.8
    loader.next_batch()
    state = loader.state_dict()
    expected = [loader.next_batch().inputs for _ in range(5)]
    again = PackedChatLoader(examples, batch_size=2, seq_len=128, pad_id=0, seed=1)
    again.load_state_dict(state)
    for want in expected:
        assert torch.equal(again.next_batch().inputs, want)


def test_bad_records_are_skipped_with_counted_located_warnings(chat_tokenizer, tmp_path, capsys):
    good = {"messages": CONVERSATION}
    lines = [json.dumps(good), "{not json", json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
             json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "5"},
                                      {"role": "assistant", "content": "ok"}]}),
             json.dumps({"messages": [{"role": "user", "content": "x"},
                                      {"role": "assistant", "content": None, "tool_calls": [{"id": "a", "function": CALL}]},
                                      {"role": "tool", "tool_call_id": "b", "content": "5"}]}),
             "", json.dumps(good)]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")
    examples, report = load_chat_examples(path, chat_tokenizer, seq_len=256)
    assert len(examples) == 2 and report.kept == 2
    assert report.skipped == {"malformed JSON": 1, "no assistant turn": 1,
                              "tool message without a matching tool call": 2}
    err = capsys.readouterr().err
    assert "chat.jsonl line 2" in err and "line 3" in err and "line 5" in err
    path.write_text("{broken\n")
    with pytest.raises(ChatDataError, match="no usable conversations"):
        load_chat_examples(path, chat_tokenizer, seq_len=256, quiet=True)
    with pytest.raises(ChatDataError, match="does not exist"):
        load_chat_examples(tmp_path / "missing.jsonl", chat_tokenizer, seq_len=256)
