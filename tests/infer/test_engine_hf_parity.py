"""Greedy output of the engine equals `transformers`' generate on the same weights (exported to HF format)."""

import pytest
import torch
from infer_helpers import tiny_model

from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingParams
from lmstack.model.checkpoint import save_model_dir
from lmstack.model.convert_hf import export_hf

transformers = pytest.importorskip("transformers")


def test_greedy_equals_transformers_generate(arch, tmp_path):
    model = tiny_model(arch)
    save_model_dir(tmp_path / "ours", model, None)
    export_hf(tmp_path / "ours", tmp_path / "hf", dtype="float32")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    prompts = [[1, 2, 3, 4], [9, 8, 7, 6, 5, 4, 3, 2, 1, 10, 11]]
    engine = Engine(model, None, EngineConfig(block_size=8, num_blocks=64))
    outputs = engine.generate(prompts, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    for prompt, output in zip(prompts, outputs):
        hf_ids = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   max_new_tokens=40, min_new_tokens=40, do_sample=False, pad_token_id=0)
        assert output.token_ids == hf_ids[0, len(prompt):].tolist()
