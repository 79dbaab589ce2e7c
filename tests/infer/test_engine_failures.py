"""A bad request is refused before it runs, and one that fails mid-step takes only its own step down with it."""

import numpy as np
import pytest
import torch
from infer_helpers import recompute_greedy, tiny_model

from faults import MASK_MISMATCH, BrokenConstraint
from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingError, SamplingParams

GREEDY = SamplingParams(max_tokens=6, temperature=0)
BROKEN = SamplingParams(max_tokens=6, temperature=0, constraint=BrokenConstraint)


def test_a_step_that_raises_aborts_its_requests_and_the_next_generate_works():
    model = tiny_model("llama")
    engine = Engine(model, None, EngineConfig(block_size=4, num_blocks=64))
    initial = engine.num_free_blocks
    with pytest.raises(RuntimeError, match=MASK_MISMATCH):  # the good prompt shares the failing step: it fails too
        engine.generate([[1, 2, 3], list(range(5, 25))], [GREEDY, BROKEN])
    # Before the fix the step had counted the prompts as computed without sampling: every later step failed.
    assert engine.num_free_blocks == initial and not engine.has_unfinished()
    fresh = Engine(model, None, EngineConfig(block_size=4, num_blocks=64)).generate([[1, 2, 3]], GREEDY)[0].token_ids
    assert engine.generate([[1, 2, 3]], GREEDY)[0].token_ids == fresh == recompute_greedy(model, [1, 2, 3], 6)
    assert engine.num_free_blocks == initial


def test_a_request_waiting_outside_the_failed_step_still_runs():
    model = tiny_model("gpt2")
    engine = Engine(model, None, EngineConfig(block_size=4, num_blocks=64, max_num_seqs=1))  # one request per step
    broken = engine.add_request([9, 8, 7], BROKEN)
    waiting = engine.add_request([1, 2, 3], GREEDY)
    with pytest.raises(RuntimeError, match=MASK_MISMATCH):
        engine.step()
    events = []
    while engine.has_unfinished():
        events += engine.step()
    assert {e.request_id for e in events} == {waiting}
    assert [e.token_id for e in events] == recompute_greedy(model, [1, 2, 3], 6)
    assert broken not in engine.requests and engine.num_free_blocks == engine.num_total_blocks


WRONG = [
    {"logprobs": True}, {"prompt_logprobs": True}, {"max_tokens": "5"}, {"max_tokens": 2.5}, {"n": 2.0},
    {"top_k": 2.5}, {"stop": None}, {"min_tokens": None}, {"stop_token_ids": [True]}, {"ignore_eos": None},
    {"logit_bias": {"5": 1.0}}, {"logit_bias": {5: 1e308, 6: 1e308}}, {"logit_bias": {5: float("nan")}},
    {"logit_bias": {5: 100.5}},
]


def test_settings_of_the_wrong_type_or_beyond_openais_range_are_refused_by_name():
    model = tiny_model("gpt2")
    engine = Engine(model, None, EngineConfig(block_size=4, num_blocks=32))
    for setting in WRONG:  # each used to crash a step (topk(True), an inf logit) or to run on a silent int() cut
        name = next(iter(setting))
        with pytest.raises(SamplingError, match=f"^{name} (must be|values must be in)") as refused:
            engine.generate([[1, 2, 3]], SamplingParams(**{"max_tokens": 5, **setting}))
        assert refused.value.param == name
    assert not engine.has_unfinished() and engine.num_free_blocks == engine.num_total_blocks
    # Integers of any kind are still taken, and so are OpenAI's extremes and -inf (a ban); the hand-computed answer:
    # greedy, since 300 and 301 are not among the greedy tokens.
    greedy = recompute_greedy(model, [1, 2, 3], 5)
    out = engine.generate([[1, 2, 3]], SamplingParams(max_tokens=np.int64(5), temperature=0, logprobs=np.int32(2),
                                                      logit_bias={np.int64(300): -100, 301: float("-inf")}))[0]
    assert out.token_ids == greedy and len(out.logprobs[0].top) == 2 and not {300, 301} & set(greedy)


@pytest.mark.parametrize("prompt", [b"def main(", bytearray(b"ab"), [True, False], torch.tensor([True, False])])
def test_bytes_and_bools_are_no_prompt(prompt):
    engine = Engine(tiny_model("gpt2"), None, EngineConfig(block_size=4, num_blocks=32))
    with pytest.raises(SamplingError, match="a prompt is a text or a list of integer token ids"):
        engine.generate(prompt, GREEDY)
    assert not engine.has_unfinished()
