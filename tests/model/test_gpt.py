"""The GPT module: construction, accounting, and the cache / packing paths against the plain forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from model_testing import random_tokens, randomise_norms, tiny_config

from lmstack.config import ConfigError
from lmstack.model.config import ModelConfig, config_from_depth
from lmstack.model.gpt import GPT, RMSNorm, build_model

ARCHS = ["gpt2", "llama"]


class DenseCache:
    """The smallest KV cache: per layer, the concatenation of every k and v seen so far."""

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def attend(self, layer_idx, q, k, v):
        if layer_idx in self.keys:
            k = torch.cat([self.keys[layer_idx], k], dim=2)
            v = torch.cat([self.values[layer_idx], v], dim=2)
        self.keys[layer_idx], self.values[layer_idx] = k, v
        past = k.size(2) - q.size(2)
        may_attend = torch.ones(q.size(2), k.size(2), dtype=torch.bool).tril(diagonal=past)
        repeat = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=may_attend)


@pytest.mark.parametrize("arch", ARCHS)
def test_meta_build_then_init_gives_finite_deterministic_model(arch):
    model = build_model(tiny_config(arch), seed=0)
    assert all(p.device.type == "cpu" for p in model.parameters())
    tokens = random_tokens(400)
    logits, loss = model(tokens, targets=tokens)
    assert logits.shape == (2, 12, 400) and torch.isfinite(logits).all()
    assert abs(loss.item() - math.log(400)) < 0.5  # a fresh model is close to uniform over the vocab
    same = build_model(tiny_config(arch), seed=0)
    other = build_model(tiny_config(arch), seed=1)
    assert torch.equal(model.blocks[0].attn.qkv.weight, same.blocks[0].attn.qkv.weight)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, other.blocks[0].attn.qkv.weight)


def test_init_scales_residual_projections():
    model = build_model(tiny_config("llama", n_layer=8, n_embd=256, mlp_hidden=512), seed=0)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.down.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert torch.equal(model.blocks[0].norm1.weight, torch.ones(256))


@pytest.mark.parametrize("arch, tied", [("gpt2", True), ("llama", False), ("llama", True)])
def test_tied_weights_are_one_tensor(arch, tied):
    model = build_model(tiny_config(arch, tie_embeddings=tied))
    assert (model.lm_head.weight is model.tok_emb.weight) is tied
    tokens = random_tokens(400)
    model(tokens, targets=random_tokens(400, seed=1))[1].backward()
    # A row of a token that never appears gets gradient only through the output projection: when tied.
    unused = next(i for i in range(400) if i not in tokens)
    assert bool(model.tok_emb.weight.grad[unused].abs().sum() > 0) is tied


def test_loss_ignores_minus_one_targets():
    model = build_model(tiny_config("llama"))
    tokens, targets = random_tokens(400), random_tokens(400, seed=1)
    targets[:, :5] = -1
    logits, loss = model(tokens, targets=targets)
    kept = targets != -1
    expected = F.cross_entropy(logits[kept], targets[kept])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    summed = model(tokens, targets=targets, loss_reduction="sum")[1]
    assert summed.item() == pytest.approx(expected.item() * kept.sum().item(), rel=1e-5)


def test_num_params_matches_transformers():
    transformers = pytest.importorskip("transformers")
    ours = build_model(tiny_config("gpt2", vocab_size=101, block_size=16)).num_params()
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=101, n_positions=16, n_embd=32, n_layer=2, n_head=4)).num_parameters()
    assert ours == theirs
    ours = build_model(tiny_config("llama")).num_params()
    theirs = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=400, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2)).num_parameters()
    assert ours == theirs


def test_flops_per_token_by_hand():
    model = build_model(tiny_config("gpt2", vocab_size=101, block_size=16))
    # per layer: ln_1 64 + qkv 32*96+96 + proj 32*32+32 + ln_2 64 + fc 32*128+128 + proj 128*32+32 = 12704
    # N = 2 layers + ln_f 64 + the (tied) lm_head matmul 101*32 = 28704; no FLOPs for the lookups
    n = 2 * 12704 + 64 + 101 * 32
    attention = 12 * 2 * 4 * 8  # 12 * layers * heads * head_dim, per token of context
    assert model.flops_per_token() == 6 * n + attention * 16
    assert model.flops_per_token(seq_len=8) == 6 * n + attention * 8
    assert model.num_params(non_embedding=True) == 2 * 12704 + 64


def test_qk_norm_weights_take_part():
    model = build_model(tiny_config("llama", qk_norm=True)).eval()
    tokens = random_tokens(400)
    before = model(tokens)[0]
    assert torch.isfinite(before).all()
    with torch.no_grad():
        model.blocks[0].attn.q_norm.weight.mul_(3.0)
    assert not torch.allclose(model(tokens)[0], before)


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_decoding_matches_full_forward(arch):
    model = build_model(tiny_config(arch, qk_norm=arch == "llama"), seed=2).eval()
    randomise_norms(model)
    tokens = random_tokens(400, length=12)
    with torch.no_grad():
        full = model(tokens)[0]
        cache = DenseCache()
        prefill = model(tokens[:, :7], positions=torch.arange(7).expand(2, 7), kv_cache=cache)[0]
        steps = [model(tokens[:, t:t + 1], positions=torch.full((2, 1), t), kv_cache=cache)[0] for t in range(7, 12)]
    assert (prefill - full[:, :7]).abs().max().item() < 1e-5
    assert (torch.cat(steps, dim=1) - full[:, 7:]).abs().max().item() < 1e-5


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_documents_match_separate_runs(arch):
    """Two documents in one row, positions restarting and a block-diagonal mask, equal two rows of one."""
    model = build_model(tiny_config(arch), seed=4).eval()
    first, second = random_tokens(400, batch=1, length=5), random_tokens(400, batch=1, length=7, seed=1)
    packed = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(5), torch.arange(7)]).unsqueeze(0)
    document = torch.tensor([0] * 5 + [1] * 7)
    mask = (document[:, None] == document[None, :]) & torch.ones(12, 12, dtype=torch.bool).tril()
    with torch.no_grad():
        together = model(packed, positions=positions, attn_mask=mask.view(1, 1, 12, 12))[0]
        apart = torch.cat([model(first)[0], model(second)[0]], dim=1)
    assert (together - apart).abs().max().item() < 1e-5


def test_logits_at_computes_only_the_asked_rows():
    model = build_model(tiny_config("llama")).eval()
    tokens = random_tokens(400, length=9)
    rows = torch.tensor([8, 17])  # the last position of each row, flat over B*T
    with torch.no_grad():
        full = model(tokens)[0].reshape(-1, 400)
        picked = model(tokens, logits_at=rows)[0]
    assert picked.shape == (2, 400)
    assert torch.allclose(picked, full[rows], atol=1e-6)


def test_too_long_input_is_refused():
    model = build_model(tiny_config("gpt2"))
    with pytest.raises(ValueError, match="longer than the model's block_size 32"):
        model(random_tokens(400, length=33))


def test_depth_dial_and_validation():
    cfg = config_from_depth(4)
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_dim) == (4, 256, 4, 64)
    assert config_from_depth(1).n_head == 1
    assert config_from_depth(4).vocab_size is None  # as ModelConfig's: training takes the data's, not a made-up 8192
    with pytest.raises(ConfigError, match="--depth"):
        config_from_depth(0)
    with pytest.raises(ConfigError, match="model.n_embd=30 must be divisible by model.n_head=4"):
        ModelConfig(n_embd=30, n_head=4).validate()
    with pytest.raises(ConfigError, match="grouped-query attention needs arch='llama'"):
        ModelConfig(arch="gpt2", n_kv_head=2).validate()
    assert ModelConfig(arch="llama", n_embd=384).hidden == 1024  # 8/3 * 384 = 1024, a multiple of 64
    assert ModelConfig(arch="gpt2", n_embd=384).hidden == 1536
    with pytest.raises(ConfigError, match="model.vocab_size is not set"):  # unset is for training to fill in
        GPT(ModelConfig())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 256), (3, 7, 64), (2, 4, 5, 16)])
def test_rms_norm_is_the_fp32_formula_rounded_once(dtype, shape):
    """The fused path (x and weight in one dtype) against the formula in fp64, and bit for bit against the cast path."""
    torch.manual_seed(0)
    norm = RMSNorm(shape[-1], eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(shape[-1]))
    norm = norm.to(dtype)
    x = (3 * torch.randn(shape)).to(dtype)
    x64 = x.double()
    want = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    got = norm(x)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=2 ** -7 if dtype == torch.bfloat16 else 1e-6, atol=0)
    # bit for bit what the cast path (taken when x and the weight differ in dtype) gives
    assert torch.equal(got, (F.rms_norm(x.float(), (shape[-1],), eps=1e-5) * norm.weight.float()).to(dtype))
