"""Prepacked bf16 Linears: bit-identical to F.linear, the same Parameters, repacked when the weights change; the
packed engine against the unpacked one; packing skipped when the copy would not fit in memory."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from infer_helpers import PROMPTS, tiny_model

from lmstack.infer.engine import Engine, EngineConfig
from lmstack.device import available_memory_bytes, onednn_bf16
from lmstack.infer.packed import PackedLinear, linear_weight_bytes, pack_linears, packed_copy_fits
from lmstack.infer.quantize import quantize_model
from lmstack.infer.params import SamplingParams

needs_onednn_bf16 = pytest.mark.skipif(not onednn_bf16(), reason="needs oneDNN with bf16 support on this CPU")


def bf16_linear(bias: bool, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(48, 40, bias=bias).to(torch.bfloat16)


@needs_onednn_bf16
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 48), (17, 48), (2, 5, 48)])
def test_packed_output_is_bit_identical_to_f_linear(bias, shape):
    linear = bf16_linear(bias)
    packed = PackedLinear.from_linear(linear)
    x = torch.randn(shape).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(packed(x), F.linear(x, linear.weight, linear.bias))
    assert packed._packed is not None  # the packed path ran


@needs_onednn_bf16
def test_packed_copy_follows_in_place_and_replaced_weights():
    linear = bf16_linear(bias=True)
    packed = PackedLinear.from_linear(linear)
    x = torch.randn(3, 48).to(torch.bfloat16)
    with torch.inference_mode():
        before = packed(x)
    with torch.no_grad():
        linear.weight.add_(0.5)  # what an optimizer step does
    with torch.inference_mode():
        after = packed(x)
        assert not torch.equal(after, before)
        assert torch.equal(after, F.linear(x, linear.weight, linear.bias))
    packed.weight = nn.Parameter(torch.randn(40, 48).to(torch.bfloat16))  # a new tensor (load, .to())
    with torch.inference_mode():
        assert torch.equal(packed(x), F.linear(x, packed.weight, packed.bias))


@needs_onednn_bf16
def test_packed_layer_trains_like_the_linear_and_deep_copies():
    linear = bf16_linear(bias=True)
    reference = copy.deepcopy(linear)
    packed = PackedLinear.from_linear(linear)
    assert packed.weight is linear.weight and packed.bias is linear.bias
    x = torch.randn(4, 48).to(torch.bfloat16)
    with torch.inference_mode():
        packed(x)  # builds the packed copy, which deepcopy must skip
    packed(x).float().square().sum().backward()
    reference(x).float().square().sum().backward()
    assert torch.equal(packed.weight.grad, reference.weight.grad)
    assert torch.equal(packed.bias.grad, reference.bias.grad)
    clone = copy.deepcopy(packed)
    assert clone._packed is None and torch.equal(clone.weight, packed.weight)
    with torch.inference_mode():
        assert torch.equal(clone(x), packed(x))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_pack_linears_keeps_state_dict_parameters_and_tied_head(arch):
    model = tiny_model(arch).to(torch.bfloat16)
    before = {name: p for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pack_linears(model)
    assert all(isinstance(m, PackedLinear) for m in model.modules() if isinstance(m, nn.Linear))
    assert {name: p for name, p in model.named_parameters()} == before  # the very same Parameter objects
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert (model.lm_head.weight is model.tok_emb.weight) == (arch == "gpt2")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_model_trains_and_quantizes_like_the_plain_one(arch):
    plain = tiny_model(arch)  # fp32 training, where the fused loss runs
    model = pack_linears(copy.deepcopy(plain))
    ids = torch.tensor([PROMPTS[2]])
    losses = []
    for m in (model, plain):
        logits, loss = m.train()(ids[:, :-1], ids[:, 1:])
        assert not logits.requires_grad  # both took the fused linear cross-entropy (its logits come back detached)
        loss.backward()
        losses.append(loss)
    assert torch.equal(*losses)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(model.parameters(), plain.parameters()))
    quantized, reference = quantize_model(model), quantize_model(plain)  # a packed layer is a plain one to int8
    assert all(torch.equal(a, b) for a, b in zip(quantized.state_dict().values(), reference.state_dict().values()))


@needs_onednn_bf16
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_engine_equals_unpacked_engine_token_for_token_with_logprobs(arch):
    model = tiny_model(arch).to(torch.bfloat16)
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, logprobs=3, prompt_logprobs=1)
    plain = Engine(copy.deepcopy(model), None, EngineConfig(pack_weights=False)).generate(PROMPTS, params)
    engine = Engine(model, None, EngineConfig())
    assert isinstance(engine.model.lm_head, PackedLinear)
    packed = engine.generate(PROMPTS, params)
    for a, b in zip(plain, packed):
        assert a.token_ids == b.token_ids
        assert a.logprobs == b.logprobs and a.prompt_logprobs == b.prompt_logprobs


@needs_onednn_bf16
def test_engine_follows_training_between_calls():
    """GRPO samples with an engine over the policy, trains the policy, then samples again."""
    model = tiny_model("llama").to(torch.bfloat16)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    Engine(model, None, EngineConfig()).generate(PROMPTS, params)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    logits, _ = model(torch.tensor([PROMPTS[2]]))
    logits.float().logsumexp(-1).sum().backward()
    optimizer.step()
    after = Engine(model, None, EngineConfig()).generate(PROMPTS, params)
    fresh = Engine(copy.deepcopy(model), None, EngineConfig(pack_weights=False)).generate(PROMPTS, params)
    assert [o.token_ids for o in after] == [o.token_ids for o in fresh]


@needs_onednn_bf16
def test_a_new_weight_at_a_freed_weights_address_is_repacked():
    """The allocator hands a freed weight's memory to the next tensor of its size; with an equal version counter,
    an address-and-version key would serve the old packed copy."""
    packed = PackedLinear.from_linear(bf16_linear(bias=False))
    x = torch.randn(2, 48).to(torch.bfloat16)
    for trial in range(20):
        with torch.inference_mode():
            packed(x)
        packed.weight = None  # drop the old weight first, as a reload does
        packed.weight = nn.Parameter(torch.empty(40, 48, dtype=torch.bfloat16).copy_(torch.randn(40, 48)))
        with torch.inference_mode():
            assert torch.equal(packed(x), F.linear(x, packed.weight)), f"stale packed weight at trial {trial}"


def test_inference_mode_weights_are_left_unpacked():
    with torch.inference_mode():
        model = tiny_model("llama").to(torch.bfloat16)
    pack_linears(model)
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


def test_the_packed_copy_is_sized_once_per_weight_and_must_fit_in_half_the_free_memory():
    model = tiny_model("gpt2").to(torch.bfloat16)  # tied: the head is the embedding, counted once
    blocks = sum(m.weight.numel() for name, m in model.named_modules() if name.startswith("blocks.") and
                 isinstance(m, nn.Linear))
    expected = 2 * (blocks + model.tok_emb.weight.numel())  # bf16: 2 bytes each
    assert linear_weight_bytes(model) == expected
    assert packed_copy_fits(model, 2 * expected) and not packed_copy_fits(model, 2 * expected - 1)
    # with the compiled decode graphs' two frozen copies: three copies in half of what is free
    assert packed_copy_fits(model, 6 * expected, 2) and not packed_copy_fits(model, 6 * expected - 1, 2)
    assert packed_copy_fits(model, None)  # an OS that does not say: pack
    total = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    assert 0 < available_memory_bytes() <= total


@needs_onednn_bf16
def test_an_engine_without_room_for_the_packed_copy_runs_unpacked_and_says_so(monkeypatch, caplog):
    model = tiny_model("llama").to(torch.bfloat16)
    monkeypatch.setattr("lmstack.infer.engine.available_memory_bytes", lambda: linear_weight_bytes(model))
    with caplog.at_level("WARNING", logger="lmstack.infer"):
        engine = Engine(model, None, EngineConfig())
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert "not prepacking" in caplog.text
    params = SamplingParams(max_tokens=8, temperature=0)
    expected = Engine(copy.deepcopy(model), None, EngineConfig(pack_weights=False)).generate(PROMPTS, params)
    assert [o.token_ids for o in engine.generate(PROMPTS, params)] == [o.token_ids for o in expected]
