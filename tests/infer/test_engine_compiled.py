"""The fast paths give the same tokens as the plain one: compiled decode steps (slow to compile) and CUDA."""

import logging

import pytest
import torch
from infer_helpers import PROMPTS, recompute_greedy, recompute_greedy_batch, tiny_model

from lmstack.infer.compiled_decode import CompiledDecoder
from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingParams

GREEDY = SamplingParams(max_tokens=40, temperature=0)


@pytest.mark.slow
def test_compiled_decode_equals_full_recompute(arch):
    model = tiny_model(arch)
    engine = Engine(model, None, EngineConfig(block_size=8, num_blocks=128, compile=True))
    outputs = engine.generate(PROMPTS, GREEDY)
    assert engine._compiled.compiled_steps == 39  # every step after the prefill (which gave the first token)
    assert [o.token_ids for o in outputs] == recompute_greedy_batch(model, PROMPTS, 40)


@pytest.mark.slow
def test_torch_compiled_decode_as_on_gpus_equals_full_recompute_and_never_compiles_again():
    model = tiny_model("llama")  # the torch.compile steps that GPUs take, here on the CPU
    engine = Engine(model, None, EngineConfig(block_size=8, num_blocks=128))
    engine._compiled = CompiledDecoder(model, engine.cache, engine.config.max_num_seqs, ahead_of_time=False)
    engine._compiled.warm_up()
    outputs = engine.generate(PROMPTS, GREEDY)  # the batch graph, at pasts of 3 to 99 keys
    alone = engine.generate([PROMPTS[1]], GREEDY)[0]  # the lone sequence's
    assert not engine._compiled.disabled  # a step that had to compile again would have turned compiling off
    assert engine._compiled.compiled_steps == 2 * 39
    assert [o.token_ids for o in outputs] == recompute_greedy_batch(model, PROMPTS, 40)
    assert alone.token_ids == recompute_greedy(model, PROMPTS[1], 40)


@pytest.mark.slow
@pytest.mark.parametrize("change", ["in place", "replaced", "module replaced"])
def test_compiled_engine_decodes_eagerly_after_the_weights_change(caplog, change):
    model = tiny_model("llama")
    engine = Engine(model, None, EngineConfig(block_size=8, num_blocks=128, compile=True))
    assert engine.generate([PROMPTS[1]], GREEDY)[0].token_ids == recompute_greedy(model, PROMPTS[1], 40)
    compiled_steps = engine._compiled.compiled_steps
    new_weight = torch.randn_like(model.lm_head.weight)
    with torch.no_grad():  # the compiled graphs hold the old weights
        if change == "in place":  # as an optimizer step does: the version counter moves
            model.lm_head.weight.copy_(new_weight)
        elif change == "replaced":  # another tensor in the module, which the graphs never saw
            model.lm_head.weight = torch.nn.Parameter(new_weight)
        else:  # another module in the model (as LoRA layers applied, or int8 ones)
            model.lm_head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=False)
            model.lm_head.weight.copy_(new_weight)
    with caplog.at_level(logging.WARNING, logger="lmstack.infer"):
        tokens = engine.generate([PROMPTS[1]], GREEDY)[0].token_ids
    assert "weights changed" in caplog.text
    assert engine._compiled.compiled_steps == compiled_steps
    assert tokens == recompute_greedy(model, PROMPTS[1], 40)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU")
def test_engine_on_gpu_equals_full_recompute_on_cpu():
    model = tiny_model("llama")
    expected = [recompute_greedy(model, p, 40) for p in PROMPTS]
    engine = Engine(model.to("cuda"), None, EngineConfig(block_size=8, num_blocks=128))
    outputs = engine.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outputs] == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU")
def test_compiled_decode_on_gpu_equals_full_recompute_on_cpu():
    model = tiny_model("gpt2")
    expected = recompute_greedy_batch(model, PROMPTS, 40)
    engine = Engine(model.to("cuda"), None, EngineConfig(block_size=8, num_blocks=128, compile=True))
    outputs = engine.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outputs] == expected


@pytest.mark.skipif(not torch.cuda.is_available() or torch.version.hip is not None, reason="needs an NVIDIA GPU")
def test_cuda_graph_decode_equals_full_recompute_on_cpu():
    model = tiny_model("gpt2")
    expected = [recompute_greedy(model, p, 40) for p in PROMPTS]
    engine = Engine(model.to("cuda"), None, EngineConfig(block_size=8, num_blocks=128, max_num_seqs=8, cuda_graphs=True))
    outputs = engine.generate(PROMPTS, GREEDY)
    assert engine._graphs.graphs, "decode steps should have been captured"
    assert [o.token_ids for o in outputs] == expected
