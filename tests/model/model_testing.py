"""Helpers shared by the model tests (a module with a unique name, importable from any test file here)."""

from __future__ import annotations

import torch

from lmstack.model.config import ModelConfig


def tiny_config(arch: str, **overrides) -> ModelConfig:
    base = dict(arch=arch, vocab_size=400, block_size=32, n_layer=2, n_head=4, n_embd=32)
    if arch == "llama":
        base.update(n_kv_head=2, mlp_hidden=48, rope_theta=500.0)
    return ModelConfig(**{**base, **overrides})


def random_tokens(vocab_size: int, batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def randomise_norms(model: torch.nn.Module, seed: int = 1) -> None:
    """Init leaves norm weights at 1 and biases at 0; parity must also hold for learned values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (0.0 if name.endswith("bias") else 1.0))
