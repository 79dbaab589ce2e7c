"""/v1/completions: text and token-id prompts, echo + prompt logprobs (lm-eval's loglikelihood path)."""

import pytest
import torch
from serve_helpers import MODEL

from lmstack.infer.params import SamplingParams
from lmstack.model.checkpoint import load_model_dir


@pytest.fixture(scope="module")
def reference_model(checkpoint):
    model, _, _ = load_model_dir(checkpoint, dtype=torch.float32)
    return model.eval()


@torch.no_grad()
def reference_logprobs(model, ids: list[int]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1, from one plain forward pass (no cache, no server)."""
    logits, _ = model(torch.tensor([ids]))
    log_probs = logits[0].float().log_softmax(-1)
    return [float(log_probs[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_echo_logprobs_of_a_token_prompt_match_a_direct_forward(client, tokenizer, reference_model):
    ids = [tokenizer.bos_id] + tokenizer.encode("the cat sat on the mat.")
    reply = client.completions.create(model=MODEL, prompt=ids, max_tokens=1, temperature=0, echo=True, logprobs=1)
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + 1 and lp.tokens[:len(ids)] == [tokenizer.token_str(t) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:len(ids)] == pytest.approx(reference_logprobs(reference_model, ids), abs=1e-4)
    # the one generated token is greedy, so it is the top-1 alternative, as lm-eval's is_greedy check reads it
    (best, best_lp), = lp.top_logprobs[-1].items()
    assert best == lp.tokens[-1] and best_lp == pytest.approx(lp.token_logprobs[-1])
    assert reply.choices[0].text.startswith(tokenizer.decode(ids))
    assert reply.usage.prompt_tokens == len(ids) and reply.usage.completion_tokens == 1


def test_max_tokens_zero_scores_the_prompt_only(client, tokenizer, reference_model):
    ids = [tokenizer.bos_id] + tokenizer.encode("hello world")
    reply = client.completions.create(model=MODEL, prompt=[ids, ids[:3]], max_tokens=0, echo=True, logprobs=0)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].logprobs.token_logprobs[1:] == pytest.approx(reference_logprobs(reference_model, ids), abs=1e-4)
    assert len(reply.choices[1].logprobs.tokens) == 3
    assert reply.usage.completion_tokens == 0 and reply.usage.prompt_tokens == len(ids) + 3


def test_text_prompt_counts_bos_and_continues(client, tokenizer):
    text = "two blue dogs"
    reply = client.completions.create(model=MODEL, prompt=text, max_tokens=6, temperature=0)
    assert reply.usage.prompt_tokens == 1 + len(tokenizer.encode(text))
    assert reply.usage.completion_tokens == 6 and reply.choices[0].finish_reason == "length"
    streamed = client.completions.create(model=MODEL, prompt=text, max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text


def test_a_streamed_echo_without_logprobs_leads_the_stream_and_matches_the_whole_reply(client):
    prompts = ["two blue dogs", "the cat"]
    ask = dict(model=MODEL, prompt=prompts, max_tokens=4, temperature=0, echo=True, n=2)
    whole = {choice.index: choice.text for choice in client.completions.create(**ask).choices}
    chunks = [chunk.choices[0] for chunk in client.completions.create(**ask, stream=True) if chunk.choices]
    # nothing to wait for without the prompt's logprobs: every sample's echo goes out before any token
    assert [(c.index, c.text) for c in chunks[:4]] == [(0, prompts[0]), (1, prompts[0]), (2, prompts[1]),
                                                       (3, prompts[1])]
    streamed = dict.fromkeys(whole, "")
    for choice in chunks:
        streamed[choice.index] += choice.text
    assert streamed == whole and all(whole[i].startswith(prompts[i // 2]) for i in whole)


def test_min_tokens_defers_a_stop_token_as_in_vllm(client, tokenizer, offline_engine):
    ids = [tokenizer.bos_id] + tokenizer.encode("two blue dogs")
    # The second greedy token, from the served checkpoint in an engine of this process
    greedy = offline_engine.generate([ids], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0]
    body = {"stop_token_ids": [greedy.outputs[0].token_ids[1]], "ignore_eos": True}
    early = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0, extra_body=body)
    late = client.completions.create(model=MODEL, prompt=ids, max_tokens=8, temperature=0,
                                     extra_body={**body, "min_tokens": 5})
    assert early.usage.completion_tokens == 2 and early.choices[0].finish_reason == "stop"
    assert late.usage.completion_tokens >= 5
