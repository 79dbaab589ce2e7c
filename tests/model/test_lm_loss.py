"""The fused projection + cross-entropy against F.cross_entropy over x @ weight.T (the reference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_testing import random_tokens, tiny_config

from lmstack.model.gpt import build_model
from lmstack.model.lm_loss import linear_cross_entropy


def reference_and_fused(reduction: str, ignored_rows: int):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(24, 16, generator=generator)
    weight = torch.randn(50, 16, generator=generator) * 0.3
    targets = torch.randint(0, 50, (24,), generator=generator)
    targets[:ignored_rows] = -1
    results = []
    for fused in (False, True):
        xg, wg = x.clone().requires_grad_(), weight.clone().requires_grad_()
        if fused:
            loss, logits = linear_cross_entropy(xg, wg, targets, reduction)
            assert not logits.requires_grad  # proves the fused op ran
        else:
            logits = xg @ wg.t()
            loss = F.cross_entropy(logits, targets, ignore_index=-1, reduction=reduction)
        upstream = torch.linspace(0.5, 2.0, loss.numel()).reshape(loss.shape)  # non-uniform for 'none'
        (loss * upstream).sum().backward()
        results.append((loss.detach(), logits.detach(), xg.grad, wg.grad))
    return results


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignored_rows", [0, 5])
def test_fused_loss_logits_and_gradients_match_cross_entropy(reduction, ignored_rows):
    reference, fused = reference_and_fused(reduction, ignored_rows)
    for ours, theirs in zip(fused, reference):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_retained_graph_backwards_twice_to_the_same_gradient():
    x = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(10, 8, requires_grad=True)
    loss, _ = linear_cross_entropy(x, weight, torch.tensor([1, 2, 3, -1, 4, 5]))
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_model_loss_gradients_match_unfused_cross_entropy(arch):
    model = build_model(tiny_config(arch), seed=0)  # gpt2: tied head, so the embedding gets both gradients
    tokens, targets = random_tokens(400), random_tokens(400, seed=1)
    targets[0, :3] = -1
    model(tokens, targets=targets)[1].backward()
    fused = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    logits, _ = model(tokens)  # no targets: the plain lm_head, then the reference loss
    F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(fused[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
