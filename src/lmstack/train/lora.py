"""LoRA: low-rank adapters on chosen linear layers, trained while the base weights stay frozen.

A LoRA layer computes W x + (alpha / r) * B A dropout(x) with A (r, in) and B (out, r); B starts at zero,
so training starts from the base model exactly. `merge_lora` folds B A into W and puts plain
linear layers back, so the result saves as an ordinary checkpoint that every other command loads.

Our own small implementation rather than `peft`: peft needs `accelerate` and HF-model plumbing for
what is ~80 lines here, and the fused qkv / gate|up layers are ordinary `nn.Linear`s to adapt whole.
`LoRALinear` subclasses `nn.Linear` and keeps its `weight` / `bias`, so parameter names stay
`blocks.N.attn.qkv.weight` (plus `.lora_A`, `.lora_B`) and the optimizer's decay rules still apply.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn as nn

from lmstack.errors import LmstackError
from lmstack.model.gpt import is_plain_linear, replace_module
from lmstack.model.onednn_linear import Linear, linear

# Short names for the adaptable layers of `GPT` (the suffix of the module name).
TARGETS = {"qkv": "attn.qkv", "proj": "attn.proj", "up": "mlp.up", "down": "mlp.down", "lm_head": "lm_head"}
DEFAULT_TARGETS = ("qkv", "proj", "up", "down")


class LoRAError(LmstackError):
    """Bad LoRA settings (rank, target names)."""


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: no copy of the base
        self.rank, self.scale = rank, alpha / rank
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init, as in the LoRA paper
        self.lora_dropout = nn.Dropout(dropout)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = linear(x, self.weight, self.bias)
        if not self.enabled:
            return y
        return y + linear(linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scale

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        return self.weight + (self.lora_B.float() @ self.lora_A.float()).to(self.weight.dtype) * self.scale


def resolve_targets(names: list[str] | tuple[str, ...]) -> list[str]:
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise LoRAError(f"LoRA target {unknown or names!r} is not one of {sorted(TARGETS)}; "
                        f"e.g. --lora-targets {','.join(DEFAULT_TARGETS)}")
    return [TARGETS[n] for n in names]


def apply_lora(model: nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0,
               targets: list[str] | tuple[str, ...] = DEFAULT_TARGETS) -> list[str]:
    """Freeze `model` and wrap the target layers in LoRA adapters; returns the adapted module names."""
    if rank < 1:
        raise LoRAError(f"--lora-rank must be at least 1, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise LoRAError(f"LoRA dropout must be in [0, 1), got {dropout}")
    suffixes = resolve_targets(targets)
    alpha = float(2 * rank if alpha is None else alpha)
    for p in model.parameters():
        p.requires_grad_(False)
    adapted = []
    for name, module in list(model.named_modules()):
        if is_plain_linear(module) and name.endswith(tuple(suffixes)):
            if name == "lm_head" and getattr(model, "cfg", None) is not None and model.cfg.tied:
                raise LoRAError("lm_head shares its weight with the embedding in this model; drop 'lm_head' "
                                "from the LoRA targets")
            replace_module(model, name, LoRALinear(module, rank, alpha, dropout))
            adapted.append(name)
    return adapted


def lora_layers(model: nn.Module) -> Iterator[LoRALinear]:
    return (m for m in model.modules() if isinstance(m, LoRALinear))


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for layer in lora_layers(model) for p in (layer.lora_A, layer.lora_B)]


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[None]:
    """Run the base model (adapters off): DPO's and GRPO's reference model without a second copy."""
    layers = list(lora_layers(model))
    for layer in layers:
        layer.enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.enabled = True


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put plain linear layers back (in place)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            merged = Linear(module.in_features, module.out_features, bias=module.bias is not None,
                            device=module.weight.device, dtype=module.weight.dtype)
            merged.weight.copy_(module.merged_weight())
            if module.bias is not None:
                merged.bias.copy_(module.bias)
            replace_module(model, name, merged)
    for p in model.parameters():
        p.requires_grad_(True)
    return model
