import math

import torch
from infer_helpers import tiny_model

from lmstack.infer.inspect import attention_weights, check_attention, inspect_prompt
from lmstack.model.gpt import expand_kv

PROMPT = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38]


def test_attention_maps_reproduce_the_attention_output(arch):
    model = tiny_model(arch)
    captured = {}
    attn = model.blocks[1].attn
    attn.register_forward_pre_hook(lambda m, args: captured.update(args=args))
    attn.register_forward_hook(lambda m, args, out: captured.update(out=out))
    result = inspect_prompt(model, PROMPT)
    x, rope = captured["args"][:2]
    weights = result.attention[1].unsqueeze(0)  # (1, H, T, T)
    with torch.inference_mode():
        _, _, v = attn.project(x, rope)
        y = weights @ expand_kv(v, attn.n_head).float()
        rebuilt = attn.proj(y.transpose(1, 2).reshape(1, len(PROMPT), -1))
    torch.testing.assert_close(rebuilt, captured["out"], atol=1e-5, rtol=1e-4)
    assert torch.allclose(weights.sum(-1), torch.ones(1)) and weights.triu(1).abs().max() == 0
    assert result.warnings == []
    assert result.head_entropy.shape == (2, 4)


def test_logit_lens_and_token_logprobs_match_the_forward(arch):
    model = tiny_model(arch)
    result = inspect_prompt(model, PROMPT, top=3)
    with torch.no_grad():
        logits, _ = model(torch.tensor([PROMPT]))
    log_probs = logits[0].log_softmax(-1)
    final = log_probs[-1].exp().topk(3)
    assert [t for t, _ in result.lens_top[-1]] == final.indices.tolist()
    assert all(math.isclose(p, q, rel_tol=1e-4) for (_, p), q in zip(result.lens_top[-1], final.values.tolist()))
    assert result.token_logprobs[0] is None
    for t in range(1, len(PROMPT)):
        assert math.isclose(result.token_logprobs[t], log_probs[t - 1, PROMPT[t]].item(), rel_tol=1e-4, abs_tol=1e-5)


def test_a_broken_mask_is_flagged_as_attending_to_the_future():
    model = tiny_model("llama")
    everything = torch.ones(1, 1, len(PROMPT), len(PROMPT), dtype=torch.bool)
    result = inspect_prompt(model, PROMPT, attn_mask=everything)
    assert any("attends to future positions" in w for w in result.warnings)
    assert all(math.isclose(w.sum().item(), w.size(0) * w.size(1), rel_tol=1e-4) for w in result.attention)


def test_a_head_collapsed_onto_one_token_is_flagged():
    T = 8
    uniform = torch.ones(T, T).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    sink = torch.zeros(T, T)
    sink[:, 0] = 1.0  # every query puts all its weight on the first token
    warnings = check_attention([torch.stack([uniform, sink])])
    assert warnings == ["layer 0 head 1: collapsed onto position 0 (100% of the weight of every later query)"]


def test_attention_weights_rows_are_a_softmax_over_visible_keys():
    model = tiny_model("gpt2")
    with torch.no_grad():
        weights = attention_weights(model.blocks[0].attn, torch.randn(1, 5, 64), None, None)
    assert torch.allclose(weights.sum(-1), torch.ones(1, 4, 5))
    assert torch.equal(weights[0, :, 0, 0], torch.ones(4))
