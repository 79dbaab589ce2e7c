"""The paged, batched engine against the slowest correct path: full recomputation without a cache."""

import pytest
import torch
from infer_helpers import PROMPTS, recompute_greedy_batch, tiny_model

from lmstack.infer import sampler
from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingParams


@pytest.mark.parametrize("greedy", ["argmax", "two-pass"])
def test_greedy_batched_equals_full_recompute_for_200_tokens(arch, greedy, monkeypatch):
    if greedy == "two-pass":  # the tiny vocab is below the size where greedy_tokens takes two passes: force them
        monkeypatch.setattr(sampler, "TWO_PASS_MIN_NUMEL", 0)
    model = tiny_model(arch)
    # Small blocks and a small token budget: prefill is chunked and sequences cross many block boundaries.
    engine = Engine(model, None, EngineConfig(block_size=8, num_blocks=160, max_batched_tokens=40))
    outputs = engine.generate(PROMPTS, SamplingParams(max_tokens=200, temperature=0))
    assert [o.token_ids for o in outputs] == recompute_greedy_batch(model, PROMPTS, 200)
    assert all(o.finish_reason == "length" for o in outputs)
    assert engine.num_free_blocks == engine.num_total_blocks


def test_logprobs_equal_log_softmax_of_full_recompute(arch):
    model = tiny_model(arch)
    engine = Engine(model, None, EngineConfig(block_size=4, num_blocks=64))
    prompt = [4, 8, 15, 16, 23, 42]
    out = engine.generate([prompt], SamplingParams(max_tokens=12, temperature=0.8, seed=1, logprobs=3,
                                                   prompt_logprobs=2))[0]
    with torch.no_grad():
        logits, _ = model(torch.tensor([prompt + out.token_ids]))
    reference = logits[0].float().log_softmax(-1)
    for step, entry in enumerate(out.logprobs):
        row = reference[len(prompt) - 1 + step]
        assert entry.token_id == out.token_ids[step]
        assert abs(entry.logprob - row[entry.token_id].item()) < 1e-4
        assert [t for t, _ in entry.top] == row.topk(3).indices.tolist()
    assert out.prompt_logprobs[0] is None
    for position, entry in enumerate(out.prompt_logprobs[1:], start=1):
        assert entry.token_id == prompt[position]
        assert abs(entry.logprob - reference[position - 1, prompt[position]].item()) < 1e-4
        assert len(entry.top) == 2
