"""Linear layers with oneDNN-prepacked weights, for bf16 inference on CPU.

A bf16 `F.linear` on CPU goes through oneDNN, which first reorders the (out, in) weight into its blocked
layout, on every call. For a decode step (a few rows) that reorder costs as much as the matmul itself.
Reordering once and calling oneDNN's linear on the packed copy (what inductor's `freezing` does for
compiled CPU models) gives bit-identical outputs at about half the time. Measured on the 2-core
AVX512-BF16 machine, 1 thread, one row, microseconds (F.linear / packed): 768x3072 132 / 64,
3072x768 142 / 61, GPT-2's 768x50257 lm_head 4,854 / 1,954 (that one reads 39 GB/s, about what this
machine's DRAM gives); decode of GPT-2-124M went from 52 to 91-102 tok/s (bench/decode.py, 1 thread).

    pack_linears(model)   # in place: every plain linear layer becomes a PackedLinear sharing its parameters

A PackedLinear is still an nn.Linear with the same Parameters, state_dict and autograd: with gradients
enabled, on another device or dtype, it runs the model's own `Linear`. The packed copy is rebuilt when the
weight changes (its storage or version counter), so a model trained between engine calls (GRPO) stays exact;
a write through `weight.data` bumps no version counter and goes unseen (nothing in lmstack writes that way).
The cost is memory: the packed copy is a second copy of every Linear weight, kept while the layer lives.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from lmstack.device import onednn_bf16
from lmstack.model.gpt import is_plain_linear, replace_module
from lmstack.model.onednn_linear import Linear, linear, onednn_allowed, onednn_linear


def packing_supported(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype == torch.bfloat16 and onednn_bf16()


class PackedLinear(Linear):
    @classmethod
    def from_linear(cls, source: nn.Linear) -> "PackedLinear":
        layer = cls(source.in_features, source.out_features, bias=False, device="meta")
        layer.weight, layer.bias = source.weight, source.bias  # the same Parameters, not copies
        layer.train(source.training)
        return layer

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._packed: torch.Tensor | None = None
        # The weight it was packed from and that weight's version. Holding the tensor keeps its memory from being
        # reused: a new weight at a freed weight's address, with an equal version, would look unchanged.
        self._packed_from: tuple[torch.Tensor, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        # Checked per call, cheaply (a decode step makes dozens): the support itself was checked when packing.
        # Inductor cannot lower the opaque packed tensor (and packs weights itself), so traced code takes `linear`.
        if (torch.is_grad_enabled() or x.dtype != torch.bfloat16 or weight.dtype != x.dtype or not x.is_cpu
                or not onednn_allowed()):
            return linear(x, weight, bias)
        source = self._packed_from
        if source is None or source[0] is not weight or source[1] != weight._version:
            self._repack(weight)
        return onednn_linear(x, self._packed, bias)

    def _repack(self, weight: torch.Tensor) -> None:
        # Packed for one row (decode); oneDNN takes any row count with it, and prefill is no slower than F.linear.
        self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)
        self._packed_from = (weight, weight._version)

    def __getstate__(self):
        # An opaque oneDNN tensor can be neither deep-copied nor pickled; it is rebuilt on the next call.
        state = self.__dict__.copy()
        state["_packed"], state["_packed_from"] = None, None
        return state


def _packable(module: nn.Module) -> bool:
    """A plain linear layer not packed yet. Subclasses (LoRA layers) and int8 layers are not plain; weights made
    under inference_mode have no version counter to tell when they change."""
    return is_plain_linear(module) and not isinstance(module, PackedLinear) and not module.weight.is_inference()


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights `pack_linears` would copy (each tensor once: a tied head shares the embedding); 0 for
    a model packed already."""
    weights = {id(m.weight): m.weight for m in model.modules() if _packable(m)}
    return sum(w.numel() * w.element_size() for w in weights.values())


def packed_copy_fits(model: nn.Module, available: int | None, other_copies: int = 0) -> bool:
    """Whether the packed copy, with `other_copies` more of the same size (compiled graphs' frozen weights), takes at
    most half of the `available` bytes, leaving the rest for the KV pool and activations; True when the amount is
    unknown."""
    return available is None or 2 * (1 + other_copies) * linear_weight_bytes(model) <= available


def pack_linears(model: nn.Module) -> nn.Module:
    """Replace every packable linear layer of `model` (`_packable`) with a PackedLinear sharing its parameters, in
    place; returns `model`."""
    for name, module in list(model.named_modules()):
        if _packable(module):
            replace_module(model, name, PackedLinear.from_linear(module))
    return model
