"""The decode fast paths (one attention group holding every row: no query gather, no output scatter, no
mask for a lone sequence; no logits row selection) against full recomputation without a cache."""

from infer_helpers import recompute_greedy, recompute_greedy_batch, tiny_model

from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingParams


def test_single_sequence_decode_equals_full_recompute(arch):
    model = tiny_model(arch)
    engine = Engine(model, None, EngineConfig(block_size=4, num_blocks=64))
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    out = engine.generate([prompt], SamplingParams(max_tokens=60, temperature=0))[0]
    assert out.token_ids == recompute_greedy(model, prompt, 60)


def test_one_token_prefill_chunks_beside_decodes_equal_full_recompute(arch):
    # A budget of 2 tokens: the second prompt is prefilled one token per step beside the first one's decode,
    # so steps of length-1 chunks occur where a row must not be sampled.
    model = tiny_model(arch)
    prompts = [[1, 2, 3], [5] * 9]
    engine = Engine(model, None, EngineConfig(block_size=4, num_blocks=64, max_batched_tokens=2))
    outputs = engine.generate(prompts, SamplingParams(max_tokens=15, temperature=0))
    assert [o.token_ids for o in outputs] == recompute_greedy_batch(model, prompts, 15)
