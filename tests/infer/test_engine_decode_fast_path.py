"""The decode fast paths against full recomputation without a cache: the eager one (one attention group holding
every row: no query gather, no output scatter, no mask for a lone sequence; no logits row selection) and the
compiled decode step's code (infer/compiled_decode.py), run here without compiling so that the engine's use of it
is checked in seconds."""

import pytest
import torch
from infer_helpers import recompute_greedy, recompute_greedy_batch, tiny_model

from lmstack.infer.compiled_decode import CompiledDecoder
from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingParams


@pytest.fixture(params=["paged", "compiled-step"])
def decoder(request) -> str:
    return request.param


def make_engine(model, decoder: str, **config) -> Engine:
    engine = Engine(model, None, EngineConfig(**config))
    if decoder == "compiled-step":
        engine._compiled = CompiledDecoder(model, engine.cache, engine.config.max_num_seqs, compiled=False)
    return engine


def ran_compiled_step(engine: Engine) -> bool:
    return engine._compiled is not None and engine._compiled.compiled_steps > 0


def test_single_sequence_decode_equals_full_recompute(arch, decoder):
    model = tiny_model(arch)
    engine = make_engine(model, decoder, block_size=4, num_blocks=64)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    out = engine.generate([prompt], SamplingParams(max_tokens=60, temperature=0))[0]
    assert out.token_ids == recompute_greedy(model, prompt, 60)
    assert ran_compiled_step(engine) == (decoder == "compiled-step")


def test_one_token_prefill_chunks_beside_decodes_equal_full_recompute(arch, decoder):
    # A budget of 2 tokens: the second prompt is prefilled one token per step beside the first one's decode,
    # so steps of length-1 chunks occur where a row must not be sampled.
    model = tiny_model(arch)
    prompts = [[1, 2, 3], [5] * 9]
    engine = make_engine(model, decoder, block_size=4, num_blocks=64, max_batched_tokens=2)
    outputs = engine.generate(prompts, SamplingParams(max_tokens=15, temperature=0))
    assert [o.token_ids for o in outputs] == recompute_greedy_batch(model, prompts, 15)


@pytest.mark.parametrize("prompt_logprobs", [None, 2])
def test_steps_of_one_unsampled_prompt_token_give_the_same_tokens_and_prompt_logprobs(decoder, prompt_logprobs):
    # A budget of 1 token: the prompt goes through one token per step, none of which samples until the last: those
    # steps want no logits at all, or (prompt logprobs) read them for the prompt's tokens.
    model = tiny_model("llama")
    prompt = [4, 8, 15, 16, 23, 42, 7, 9]
    params = SamplingParams(max_tokens=12, temperature=0, prompt_logprobs=prompt_logprobs, logprobs=2)
    out = make_engine(model, decoder, block_size=4, num_blocks=64, max_batched_tokens=1).generate([prompt], params)[0]
    reference = Engine(model, None, EngineConfig(block_size=4, num_blocks=64)).generate([prompt], params)[0]
    assert out.token_ids == reference.token_ids == recompute_greedy(model, prompt, 12)
    if prompt_logprobs is None:
        assert out.prompt_logprobs is None
    else:
        assert out.prompt_logprobs[0] is None and reference.prompt_logprobs[0] is None
    scored, expected = (out.prompt_logprobs or [None])[1:], (reference.prompt_logprobs or [None])[1:]
    for ours, theirs in zip(scored + out.logprobs, expected + reference.logprobs, strict=True):
        assert ours.token_id == theirs.token_id and [t for t, _ in ours.top] == [t for t, _ in theirs.top]
        torch.testing.assert_close(ours.logprob, theirs.logprob, rtol=1e-4, atol=1e-4)


def test_preempted_and_recomputed_sequences_give_the_same_tokens(decoder):
    model = tiny_model("gpt2")
    prompts = [[i + 1, i + 2, i + 3] for i in range(6)]
    params = SamplingParams(max_tokens=45, temperature=0.7, seed=3)
    ample = Engine(model, None, EngineConfig(block_size=4, num_blocks=200)).generate(prompts, params)
    tight_engine = make_engine(model, decoder, block_size=4, num_blocks=24)
    tight = tight_engine.generate(prompts, params)
    assert tight_engine.scheduler.num_preemptions > 0
    assert [o.token_ids for o in tight] == [o.token_ids for o in ample]


def test_penalised_and_plain_greedy_rows_in_one_batch(decoder):
    # A biased and penalised row beside a plain greedy one: the bias makes token 17 win every step (the raw argmax
    # almost never is), and the plain row must still follow full recompute.
    model = tiny_model("llama")
    prompts = [[2, 7, 1, 8], [3, 1, 4, 1, 5]]
    params = [SamplingParams(max_tokens=10, temperature=0),
              SamplingParams(max_tokens=10, temperature=0, logit_bias={17: 100.0}, repetition_penalty=1.3)]
    engine = make_engine(model, decoder, block_size=4, num_blocks=64)
    plain, biased = engine.generate(prompts, params)
    assert biased.token_ids == [17] * 10
    assert plain.token_ids == recompute_greedy(model, prompts[0], 10)
    assert ran_compiled_step(engine) == (decoder == "compiled-step")
