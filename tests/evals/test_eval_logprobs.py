"""Prompt logprobs for loglikelihood scoring, checked against the model's own cross-entropy."""

import pytest
import torch

from lmstack.evals.completions import PromptToken, model_prompt_logprobs, prompt_tokens
from lmstack.evals.solvers import continuation_logprob
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model
from lmstack.tokenizer import Tokenizer

TEXTS = ["The sky is blue. The grass is green. The sun is bright. " * 4, "def f(x):\n    return x + 1\n" * 4]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = Tokenizer.train(TEXTS * 4, vocab_size=300, show_progress=False, min_frequency=1)
    model = build_model(ModelConfig(arch="llama", vocab_size=320, block_size=128, n_layer=2, n_head=4, n_kv_head=2,
                                    n_embd=64), seed=0).eval()
    return model, tokenizer


def test_prompt_logprobs_sum_to_the_models_loss(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    text = "The sky is green. def f(x): return x"
    tokens = model_prompt_logprobs(model, tokenizer, text)
    ids = [tokenizer.bos_id, *tokenizer.encode(text)]
    assert [t.token for t in tokens] == [tokenizer.decode([i]) for i in ids[1:]]
    assert "".join(t.token for t in tokens) == text and tokens[0].offset == 0
    idx = torch.tensor([ids])
    with torch.no_grad():
        _, loss = model(idx[:, :-1], idx[:, 1:], loss_reduction="sum")
    assert sum(t.logprob for t in tokens) == pytest.approx(-loss.item(), rel=1e-5)


def test_continuation_logprob_counts_only_tokens_after_the_context():
    tokens = [PromptToken("Q", None, 0), PromptToken(":", -1.0, 1), PromptToken(" yes", -0.5, 2), PromptToken("!", -0.25, 6)]
    assert continuation_logprob(tokens, "Q:") == (-0.75, 2)
    with pytest.raises(ValueError, match="no logprob"):
        continuation_logprob(tokens, "")


def test_prompt_longer_than_the_context_is_scored_in_sliding_windows(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    text = "The sky is blue. def f(x): return x + 1. " * 30
    full = [tokenizer.bos_id, *tokenizer.encode(text)]
    block, half = model.cfg.block_size, model.cfg.block_size // 2
    assert len(full) > 3 * block
    tokens = model_prompt_logprobs(model, tokenizer, text)
    assert len(tokens) == len(full) - 1
    # The reference, one position at a time: windows end at block, block + half, block + 2 * half, ... (the
    # last one at the end of the text); position p is scored by the first window ending after it, from the
    # tokens of that window before p.
    for p in range(1, len(full), 9):
        end = block
        while end <= p:
            end += half
        end = min(end, len(full))
        with torch.no_grad():
            logits, _ = model(torch.tensor([full[max(0, end - block):p]]))
        expected = torch.log_softmax(logits[0, -1].float(), dim=-1)[full[p]].item()
        assert tokens[p - 1].logprob == pytest.approx(expected, abs=1e-4), p


def test_an_echo_drops_leading_unscored_tokens_and_keeps_a_later_gap_so_scoring_fails():
    # bos (no text, offset 0), the prompt "Q: yes", then the one generated token past the prompt's end
    tokens = prompt_tokens(["<bos>", "Q", ":", " yes", "!"], [None, -2.0, -1.0, -0.5, -0.1], [0, 0, 1, 2, 6], 6)
    assert [t.token for t in tokens] == ["Q", ":", " yes"]
    unscored_first = prompt_tokens(["Q", ":", " yes"], [None, -1.0, -0.5], [0, 1, 2], 6)
    assert [t.token for t in unscored_first] == [":", " yes"]
    gap = prompt_tokens(["Q", ":", " yes"], [-2.0, None, -0.5], [0, 1, 2], 6)
    assert [t.logprob for t in gap] == [-2.0, None, -0.5]
    with pytest.raises(ValueError, match="no logprob"):
        continuation_logprob(gap, "Q")


def test_an_endpoint_without_completions_is_named_with_what_scoring_needs():
    """A chat-only endpoint answered 'failed: Error code: 404' on every sample of val_bpb, and the hint to
    --resume, which fails the same way."""
    from lmstack.agent.client import ModelCallError, OpenAIClient
    from lmstack.agent.testing.scripted_server import ScriptedServer
    from lmstack.evals.completions import prompt_logprobs

    with ScriptedServer({"scripts": {"chat": [{"content": "hi"}]}}) as server:  # chat completions only
        with pytest.raises(ModelCallError) as err:
            prompt_logprobs(OpenAIClient(server.base_url, "chat"), "def f(x):")
    assert f"{server.base_url}/completions answered HTTP 404 for model 'chat'" in str(err.value)
    assert "needs /v1/completions (lmstack serve, vLLM, llama.cpp) or a checkpoint dir as --model" in str(err.value)
