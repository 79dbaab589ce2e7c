"""The compiled decode step's arithmetic (infer/compiled_decode.py), run eagerly: it reads past keys from the paged
pool through block tables, attends over them and its own new key, and hands the new keys and values to the pool."""

import pytest
import torch
import torch._inductor.config as inductor_config
from infer_helpers import PROMPTS, tiny_model

from lmstack.device import last_level_cache_bytes
from lmstack.infer.compiled_decode import CompiledDecoder, _trace_settings, cpp_gemms_pay
from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingParams
from lmstack.infer.quantize import quantize_model
from lmstack.model.config import ModelConfig
from lmstack.model.gpt import GPT


def engine_after_prefill(model) -> Engine:
    """An eager engine that has run the prefill step of PROMPTS (each has sampled its first token)."""
    engine = Engine(model, None, EngineConfig(block_size=8, num_blocks=64))
    for prompt in PROMPTS:
        engine.add_request(prompt, SamplingParams(max_tokens=4, temperature=0))
    engine.step()
    return engine


@pytest.mark.parametrize("batch", ["all", "one"])
def test_decode_step_equals_full_recompute_and_eager_cache_writes(arch, batch):
    model = tiny_model(arch)
    eager, functional = engine_after_prefill(model), engine_after_prefill(model)
    decoder = CompiledDecoder(model, functional.cache, 8, compiled=False)
    chunks = functional.scheduler.schedule()  # one new token per sequence, with a slot for it
    if batch == "one":  # a lone sequence whose block table is one block wide: the table is padded to two
        chunks = chunks[:1]
    assert all(c.length == 1 for c in chunks)
    seqs = [c.seq for c in chunks]
    logits = decoder.run([s.token_ids[-1] for s in seqs], [c.start for c in chunks], [s.block_table for s in seqs])

    with torch.no_grad():
        for seq, row in zip(seqs, logits):
            reference, _ = model(torch.tensor([seq.token_ids]))
            torch.testing.assert_close(row, reference[0, -1], rtol=1e-4, atol=1e-4)
    eager.step()  # the eager paged path writes the same step's keys and values
    used = sorted({slot for s in seqs for slot in range(s.num_tokens)
                   for slot in [s.block_table[slot // 8] * 8 + slot % 8]})
    for pool in ("k", "v"):
        torch.testing.assert_close(getattr(functional.cache, pool)[:, used], getattr(eager.cache, pool)[:, used],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(last_level_cache_bytes() is None, reason="the OS does not report the CPU's cache sizes")
def test_gemms_autotune_with_amx_and_without_it_for_a_lone_sequences_int8_or_cached_weights():
    cache = last_level_cache_bytes()
    small = tiny_model("llama").to(torch.bfloat16)
    # bf16 weights larger than the cache, on the meta device (sizes only): streamed from memory, oneDNN's kernels stay.
    # One block's linears hold ~12 width^2 weights of 2 bytes; a multiple of 64, as RoPE needs an even head dim.
    width = (int((cache / (2 * 12)) ** 0.5) // 64 + 1) * 64
    with torch.device("meta"):
        big = GPT(ModelConfig(arch="llama", vocab_size=64, block_size=64, n_layer=1, n_head=1, n_embd=width))
    big = big.to(torch.bfloat16)
    int8 = quantize_model(tiny_model("gpt2"))
    assert [cpp_gemms_pay(m, batched=False, amx=False) for m in (small, big, int8)] == [True, False, True]
    assert not any(cpp_gemms_pay(m, batched=True, amx=False) for m in (small, big, int8))
    assert all(cpp_gemms_pay(m, batched, amx=True) for m in (small, big, int8) for batched in (False, True))


def test_trace_settings_are_restored_even_when_the_call_raises():
    before = inductor_config.freezing
    with pytest.raises(RuntimeError, match="boom"):
        with _trace_settings(((inductor_config, "freezing", not before),)):
            assert inductor_config.freezing is (not before)
            raise RuntimeError("boom")
    assert inductor_config.freezing is before
