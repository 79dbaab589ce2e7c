"""Weight-only int8: the layer against its dequantized weight, the quantized engine against full recomputation
of the same quantized model, and the quantized model against the full-precision one."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from infer_helpers import PROMPTS, recompute_greedy, recompute_greedy_batch, tiny_model

from lmstack.cli import main
from lmstack.config import ConfigError, load_config
from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingParams
from lmstack.infer.quantize import KERNEL_MAX_ROWS, Int8Linear, quantize_model
from lmstack.model.checkpoint import save_model_dir
from lmstack.serve.config import ServeConfig

def random_linear(in_features: int, out_features: int, bias: bool, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight[3].zero_()  # an all-zero row must survive (its absmax is 0)
        linear.weight[5] *= 40  # one channel far larger than the rest: per-channel scales keep the others fine
    return linear


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_quantized_weight_is_within_half_a_scale_and_uses_absmax_over_127(dtype):
    linear = random_linear(48, 24, bias=False).to(dtype)
    with torch.no_grad():
        linear.weight[7] *= 1e-4  # absmax / 127 below fp16's smallest normal number
    layer = Int8Linear.from_linear(linear)
    original, weight, scale = linear.weight.float(), layer.weight.to(torch.int32), layer.scale.float()
    assert layer.weight.dtype == torch.int8 and layer.scale.dtype == dtype and scale.shape == (24,)
    assert weight.abs().max() <= 127
    error = (weight * scale.unsqueeze(1) - original).abs()
    assert torch.all(error <= scale.unsqueeze(1) * (0.5 + 1e-5))  # 1e-5: the fp32 division's own rounding
    absmax = original.abs().amax(1)
    normal = absmax / 127 >= torch.finfo(dtype).tiny  # all rows but the zero one (and, in fp16, the tiny one)
    assert normal.sum() == (22 if dtype == torch.float16 else 23)
    torch.testing.assert_close(scale[normal], absmax[normal] / 127, rtol=2**-8, atol=0)
    assert torch.all(weight[normal].abs().amax(1) == 127) and torch.all(weight[3] == 0)


def test_hand_computed_rows():
    linear = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        # absmax 127 / 128, so the scale is exactly 1/128 and w / scale is exact: -63.5, 31.75, 0.5
        linear.weight.copy_(torch.tensor([[127 / 128, -63.5 / 128, 31.75 / 128, 0.5 / 128], [0.0, 0.0, 0.0, 0.0]]))
    layer = Int8Linear.from_linear(linear)
    assert layer.weight.tolist() == [[127, -64, 32, 0], [0, 0, 0, 0]]  # halves round to even
    assert layer.scale.tolist() == [1 / 128, torch.finfo(torch.float32).tiny]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(5,), (2, 3), (1, 1), (1, KERNEL_MAX_ROWS), (KERNEL_MAX_ROWS + 1,), (2, 40)])
def test_int8_linear_equals_linear_with_the_dequantized_weight(dtype, shape):
    """Batch and time of any shape; for bf16, rows up to KERNEL_MAX_ROWS take the int8 kernel, more dequantize."""
    linear = random_linear(96, 40, bias=True).to(dtype)
    layer = Int8Linear.from_linear(linear)
    x = torch.randn(*shape, 96, generator=torch.Generator().manual_seed(1)).to(dtype)
    dequantized = layer.weight.float() * layer.scale.float().unsqueeze(1)
    reference = F.linear(x.float(), dequantized, linear.bias.float())
    with torch.inference_mode():
        y = layer(x)
    assert y.shape == (*shape, 40) and y.dtype == dtype
    if dtype == torch.float32:
        torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-5)
    else:  # one or two bf16 roundings of the output (8 significant bits) against the fp32 reference
        torch.testing.assert_close(y.float(), reference, rtol=2e-2, atol=2e-2 * reference.abs().mean().item())


def test_greedy_quantized_engine_equals_full_recompute_of_the_quantized_model(arch):
    model = quantize_model(tiny_model(arch))
    expected = recompute_greedy_batch(model, PROMPTS, 60)
    engine = Engine(model, None, EngineConfig(block_size=8, num_blocks=160, max_batched_tokens=40))
    outputs = engine.generate(PROMPTS, SamplingParams(max_tokens=60, temperature=0))
    assert [o.token_ids for o in outputs] == expected


def test_bf16_quantized_engine_picks_the_argmax_of_full_recompute(arch):
    """bf16 decode runs the int8 kernel, long recomputations dequantize: the two round differently, so the
    engine's token must be the reference's argmax up to bf16 noise, at every step (teacher-forced)."""
    model = tiny_model(arch).to(torch.bfloat16)
    engine = Engine(model, None, EngineConfig(block_size=8, num_blocks=160, quantization="int8"))
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    tokens = engine.generate([prompt], SamplingParams(max_tokens=30, temperature=0))[0].token_ids
    with torch.no_grad():
        logits, _ = model(torch.tensor([prompt + tokens]))
    steps = logits[0, len(prompt) - 1:-1].float()
    chosen = steps.gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1)
    assert torch.all(steps.amax(1) - chosen <= 0.02 * steps.abs().amax(1))  # measured: at most 0.34%
    assert (steps.argmax(1) == torch.tensor(tokens)).float().mean() >= 0.9


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantized_logits_stay_close_to_full_precision(arch, dtype):
    model = tiny_model(arch).to(dtype)
    quantized = quantize_model(copy.deepcopy(model))
    idx = torch.randint(0, 320, (4, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, _ = model(idx)
        int8, _ = quantized(idx)
    full, int8 = full.float(), int8.float()
    assert (int8 - full).norm() / full.norm() < 0.02  # measured 0.5-0.8%
    assert (int8.argmax(-1) == full.argmax(-1)).float().mean() >= 0.95  # measured 0.99-1.0


def test_tied_gpt2_keeps_its_embedding_and_gets_an_int8_head():
    model = tiny_model("gpt2")
    embedding = model.tok_emb.weight
    before = embedding.detach().clone()
    assert model.lm_head.weight is embedding
    quantize_model(model)
    assert model.tok_emb.weight is embedding and isinstance(embedding, nn.Parameter)
    assert torch.equal(embedding, before)
    assert isinstance(model.lm_head, Int8Linear) and model.lm_head.weight.dtype == torch.int8
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, Int8Linear))]
    assert all(isinstance(m, Int8Linear) for m in layers) and len(layers) == 2 * 4 + 1


def test_unknown_method_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="quantization='int4' is not a known method; choose one of 'int8'"):
        quantize_model(tiny_model("llama"), "int4")
    with pytest.raises(ConfigError, match="'int4'"):
        load_config(EngineConfig, overrides=["quantization=int4"])
    with pytest.raises(ConfigError, match="'int4'"):
        Engine(tiny_model("llama"), None, EngineConfig(quantization="int4"))


def test_every_cli_key_path_reaches_the_engine(tmp_path, tokenizer, capsys):
    """`lmstack sample` / `chat` load an EngineConfig; `lmstack serve` nests it under `engine.`."""
    assert load_config(EngineConfig, overrides=["quantization=int8"]).quantization == "int8"
    assert load_config(ServeConfig, overrides=["engine.quantization=int8"]).engine.quantization == "int8"
    assert EngineConfig().quantization is None
    path = tmp_path / "tiny"
    save_model_dir(path, tiny_model("llama", vocab_size=tokenizer.vocab_size), tokenizer)
    assert main(["sample", str(path), "--max-tokens", "4", "--set", "quantization=int4"]) == 2
    assert "quantization='int4' is not a known method" in capsys.readouterr().err
    assert main(["sample", str(path), "--prompt", "Hi", "--max-tokens", "4", "--set", "quantization=int8"]) == 0
    assert capsys.readouterr().out.startswith("Hi")


def test_adapter_layers_must_be_merged_first():
    from lmstack.train.lora import apply_lora

    model = tiny_model("llama")
    apply_lora(model, rank=2)
    with pytest.raises(ConfigError, match="merge the adapters"):
        quantize_model(model)


@pytest.mark.slow
def test_compiled_quantized_decode_equals_full_recompute():
    model = tiny_model("llama")
    engine = Engine(model, None, EngineConfig(block_size=8, num_blocks=128, compile=True, quantization="int8"))
    outputs = engine.generate(PROMPTS[:2], SamplingParams(max_tokens=20, temperature=0))
    assert not engine._compiled.disabled and engine._compiled.compiled_steps == 19  # compiled, every decode step
    assert [o.token_ids for o in outputs] == [recompute_greedy(model, p, 20) for p in PROMPTS[:2]]
