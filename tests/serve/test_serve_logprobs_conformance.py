"""Logprobs as OpenAI reports them: a stop token that ends a reply is not listed (it is not in the returned
text), and the legacy `text_offset` is each token's character index in the returned `text`."""

import pytest
from serve_helpers import HELLO, MODEL

from lmstack.infer.params import SamplingParams

PROMPT = "two blue dogs"
END = "<|end|>"
NON_ASCII = "naïve café 🙂"  # 2-, 2- and 4-byte characters, which byte-level BPE splits across tokens


def stopping_bias(ask) -> tuple[int, int]:
    """A logit bias on <|end|> that makes the tiny model's greedy reply end on it after k >= 2 other tokens,
    and k, read from a run with ignore_eos (where the stop token stays) -- so it does not depend on the fix.
    Logprobs are the model's own, before the bias; the bias only steers which token greedy picks."""
    for bias in range(1, 9):
        tokens = ask(bias)
        ends = [i for i, t in enumerate(tokens) if t in (END, "<|bos|>")]  # the tokenizer's stop tokens
        if ends and ends[0] >= 2 and tokens[ends[0]] == END:
            return bias, ends[0]
    pytest.fail("no logit bias on <|end|> in 1..8 ends the tiny model's reply after >= 2 tokens")


@pytest.fixture(scope="module")
def chat_stop(client, tokenizer):
    def ask(bias):
        reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=24, temperature=0,
                                               logprobs=True, logit_bias={str(tokenizer.end_id): bias},
                                               extra_body={"ignore_eos": True})
        return [entry.token for entry in reply.choices[0].logprobs.content]
    return stopping_bias(ask)


@pytest.fixture(scope="module")
def completion_stop(client, tokenizer):
    def ask(bias):
        reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, logprobs=0,
                                          logit_bias={str(tokenizer.end_id): bias}, extra_body={"ignore_eos": True})
        return reply.choices[0].logprobs.tokens
    return stopping_bias(ask)


def chat(client, tokenizer, bias, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, logprobs=True, top_logprobs=2,
                                          logit_bias={str(tokenizer.end_id): bias}, **kwargs)


def test_chat_reply_ending_on_the_stop_token_lists_only_its_content_tokens(client, tokenizer, chat_stop):
    bias, k = chat_stop
    kept = chat(client, tokenizer, bias, max_tokens=k + 6, extra_body={"ignore_eos": True}).choices[0].logprobs.content
    reply = chat(client, tokenizer, bias, max_tokens=k + 6, n=2)
    for choice in reply.choices:
        assert choice.finish_reason == "stop"
        tokens = [e.token for e in choice.logprobs.content]
        assert tokens == [e.token for e in kept[:k]] and END not in tokens
        # n=2 batches the two samples, which moves float32 logprobs in the last digits
        assert [e.logprob for e in choice.logprobs.content] == pytest.approx([e.logprob for e in kept[:k]], abs=1e-4)
        raw = b"".join(bytes(e.bytes) for e in choice.logprobs.content)
        assert raw.decode("utf-8", "replace") == choice.message.content
    # The stop token was sampled, so usage counts it (as the engine and vLLM do): k + 1 per choice.
    assert reply.usage.completion_tokens == 2 * (k + 1)


def test_streamed_chat_ending_on_the_stop_token_sends_no_logprob_for_it(client, tokenizer, chat_stop):
    bias, k = chat_stop
    plain = chat(client, tokenizer, bias, max_tokens=k + 6, n=2)
    stream = chat(client, tokenizer, bias, max_tokens=k + 6, n=2, stream=True, stream_options={"include_usage": True})
    streamed: dict[int, list] = {0: [], 1: []}
    chunks = list(stream)
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.logprobs and choice.logprobs.content:
                streamed[choice.index] += choice.logprobs.content
    for choice in plain.choices:
        assert len(streamed[choice.index]) == k
        assert [e.token for e in streamed[choice.index]] == [e.token for e in choice.logprobs.content]
        assert [e.logprob for e in streamed[choice.index]] == pytest.approx(
            [e.logprob for e in choice.logprobs.content], abs=1e-4)
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens == 2 * (k + 1)


def test_ignore_eos_keeps_the_stop_token_as_output_and_goes_on(client, tokenizer, chat_stop):
    bias, k = chat_stop
    reply = chat(client, tokenizer, bias, max_tokens=k + 4, extra_body={"ignore_eos": True})
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and reply.usage.completion_tokens == k + 4
    assert len(choice.logprobs.content) == k + 4 and choice.logprobs.content[k].token == END
    assert END in choice.message.content


def test_request_stop_token_ids_stop_even_with_ignore_eos_and_are_not_listed(client, tokenizer, chat_stop):
    bias, k = chat_stop
    reply = chat(client, tokenizer, bias, max_tokens=k + 6,
                 extra_body={"ignore_eos": True, "stop_token_ids": [tokenizer.end_id]})
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and reply.usage.completion_tokens == k + 1
    assert len(choice.logprobs.content) == k and END not in [e.token for e in choice.logprobs.content]


def test_completion_ending_on_the_stop_token_lists_only_its_text_tokens(client, tokenizer, completion_stop):
    bias, k = completion_stop
    args = dict(model=MODEL, prompt=PROMPT, max_tokens=k + 6, temperature=0, logprobs=1,
                logit_bias={str(tokenizer.end_id): bias})
    kept = client.completions.create(**args, extra_body={"ignore_eos": True}).choices[0].logprobs
    reply = client.completions.create(**args)
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and reply.usage.completion_tokens == k + 1
    assert choice.logprobs.tokens == kept.tokens[:k]
    assert choice.logprobs.token_logprobs == pytest.approx(kept.token_logprobs[:k], abs=1e-4)
    streamed = [c.choices[0].logprobs.tokens for c in client.completions.create(**args, stream=True)
                if c.choices and c.choices[0].logprobs]
    assert sum(streamed, []) == kept.tokens[:k]



def decoded_offsets(tokenizer, ids: list[int], hidden: int = 0) -> list[int]:
    """The independent reference: where token i starts is the length of the decoded prefix ids[hidden:i].
    A prefix that ends inside a character decodes to a trailing U+FFFD: that token contributes nothing
    yet (the one that completes the character brings all of it), so the partial character is not counted.
    The first `hidden` tokens (the bos a text prompt gets) are not in the returned text."""
    return [len(tokenizer.decode(ids[hidden:i]).rstrip("\ufffd")) if i >= hidden else 0 for i in range(len(ids))]


def check_offsets(tokenizer, ids: list[int], logprobs, text: str, hidden: int = 0) -> None:
    assert len(logprobs.text_offset) == len(ids)
    assert logprobs.text_offset == decoded_offsets(tokenizer, ids, hidden)
    assert logprobs.text_offset == sorted(logprobs.text_offset) and logprobs.text_offset[-1] <= len(text)
    for i in range(hidden, len(ids)):
        try:
            piece = tokenizer.token_bytes(ids[i]).decode("utf-8")
        except UnicodeDecodeError:  # part of a character: its text comes with the token that completes it
            continue
        if not tokenizer.decode(ids[hidden:i]).endswith("\ufffd"):  # nothing pending before it
            assert text[logprobs.text_offset[i]:].startswith(piece)


def test_echo_text_offsets_index_the_returned_text(client, tokenizer, offline_engine):
    reply = client.completions.create(model=MODEL, prompt=NON_ASCII, max_tokens=6, temperature=0, echo=True,
                                      logprobs=1)
    choice = reply.choices[0]
    generated = offline_engine.generate(NON_ASCII, SamplingParams(max_tokens=6, temperature=0))[0]
    shown = generated.token_ids  # a stop token that ended the reply is not in `text` (nor in the logprobs)
    if generated.finish_reason == "stop" and shown[-1] in tokenizer.stop_ids:
        shown = shown[:-1]
    ids = [tokenizer.bos_id] + tokenizer.encode(NON_ASCII) + shown
    assert choice.text == NON_ASCII + generated.text
    check_offsets(tokenizer, ids, choice.logprobs, choice.text, hidden=1)  # the bos is not in `text`

    stream = client.completions.create(model=MODEL, prompt=NON_ASCII, max_tokens=6, temperature=0, echo=True,
                                       logprobs=1, stream=True)
    streamed = [o for c in stream if c.choices and c.choices[0].logprobs for o in c.choices[0].logprobs.text_offset]
    assert streamed == choice.logprobs.text_offset  # the echo's chunk lists the prompt's tokens with their offsets


def test_echo_text_offsets_of_a_token_id_prompt(client, tokenizer):
    ids = [tokenizer.bos_id] + tokenizer.encode(NON_ASCII + " the cat")
    reply = client.completions.create(model=MODEL, prompt=ids, max_tokens=0, echo=True, logprobs=0)
    choice = reply.choices[0]
    assert choice.text == tokenizer.decode(ids)  # a token-id prompt echoes its decoding, bos included
    check_offsets(tokenizer, ids, choice.logprobs, choice.text)


@pytest.mark.parametrize("max_tokens", [0, 4])  # 0: the prompt scored alone, as lm-eval's loglikelihood asks
def test_streamed_echo_lists_what_the_whole_reply_lists(client, tokenizer, max_tokens):
    # A text prompt (offsets from its encoding), and a batch of token-id ones (offsets from decoding them)
    ids = [tokenizer.bos_id] + tokenizer.encode("the cat sat")
    for prompt in (NON_ASCII, [ids, ids[:3]]):
        ask = dict(model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, echo=True, logprobs=1, n=2)
        whole = client.completions.create(**ask).choices
        fields = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
        streamed = {c.index: {"text": "", **{f: [] for f in fields}} for c in whole}
        for chunk in client.completions.create(**ask, stream=True):
            for choice in chunk.choices:
                streamed[choice.index]["text"] += choice.text
                for f in fields:  # the echoed prompt's chunk used to come without logprobs
                    streamed[choice.index][f] += getattr(choice.logprobs, f) if choice.logprobs else []
        for choice in whole:
            got, listed = streamed[choice.index], choice.logprobs
            assert listed.token_logprobs[0] is None  # the prompt's first token: the prompt is listed
            assert got["text"] == choice.text and got["tokens"] == listed.tokens
            assert got["text_offset"] == listed.text_offset
            assert got["token_logprobs"] == pytest.approx(listed.token_logprobs, abs=1e-5)
            assert [t and list(t) for t in got["top_logprobs"]] == [t and list(t) for t in listed.top_logprobs]
            assert [v for t in got["top_logprobs"] if t for v in t.values()] == pytest.approx(
                [v for t in listed.top_logprobs if t for v in t.values()], abs=1e-5)
