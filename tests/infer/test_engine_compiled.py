"""The fast paths give the same tokens as the plain one: torch.compile (slow to compile) and CUDA."""

import pytest
import torch
from infer_helpers import recompute_greedy, tiny_model

from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingParams

PROMPTS = [[1, 2, 3], [5] * 21, list(range(10, 40)), [7]]


@pytest.mark.slow
def test_compiled_decode_equals_full_recompute():
    model = tiny_model("llama")
    engine = Engine(model, None, EngineConfig(block_size=8, num_blocks=128, compile=True))
    outputs = engine.generate(PROMPTS, SamplingParams(max_tokens=40, temperature=0))
    assert [o.token_ids for o in outputs] == [recompute_greedy(model, p, 40) for p in PROMPTS]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA/ROCm GPU")
def test_engine_on_gpu_equals_full_recompute_on_cpu():
    model = tiny_model("llama")
    expected = [recompute_greedy(model, p, 40) for p in PROMPTS]
    engine = Engine(model.to("cuda"), None, EngineConfig(block_size=8, num_blocks=128))
    outputs = engine.generate(PROMPTS, SamplingParams(max_tokens=40, temperature=0))
    assert [o.token_ids for o in outputs] == expected


@pytest.mark.skipif(not torch.cuda.is_available() or torch.version.hip is not None, reason="needs an NVIDIA GPU")
def test_cuda_graph_decode_equals_full_recompute_on_cpu():
    model = tiny_model("gpt2")
    expected = [recompute_greedy(model, p, 40) for p in PROMPTS]
    engine = Engine(model.to("cuda"), None, EngineConfig(block_size=8, num_blocks=128, max_num_seqs=8, cuda_graphs=True))
    outputs = engine.generate(PROMPTS, SamplingParams(max_tokens=40, temperature=0))
    assert engine._graphs.graphs, "decode steps should have been captured"
    assert [o.token_ids for o in outputs] == expected
