"""Weight-only int8 quantization for inference (what gpt-fast's and vLLM's weight-only int8 do).

Each output channel of a Linear gets one scale, absmax / 127, computed in fp32 and stored in the
layer's dtype (the kernel wants scales in the activation dtype); the weight is rounded to int8 with
that stored scale, so every element is within scale / 2 of the original. Activations stay in the
model's dtype. Decode at batch 1 reads half the bytes of bf16 weights, which is what bounds it on CPU:
bench/decode.py on an idle machine, GPT-2-124M, against the engine's prepacked bf16 (infer/packed.py):
1 thread 92.6 vs 90.8 tok/s, 2 threads 145 vs 116 (against unpacked bf16 it was 1.8x at 1 thread).
It also halves the weights' memory.

    quantize_model(model, "int8")   # in place: Linear layers of the blocks and the lm_head -> Int8Linear
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.symbolic_shapes import statically_known_true

from lmstack.config import ConfigError
from lmstack.model.gpt import is_plain_linear, replace_module

METHODS = ("int8",)

# Rows up to which torch._weight_int8pack_mm beats dequantizing, on CPU with bf16 activations. Measured on the
# 2-core AVX512-BF16 machine, 1 thread, GPT-2-124M's block linears, ms per pass (int8 kernel / dequant / bf16):
# 1 row 5.1 / 25 / 10.7, 8 rows 9.4 / 15.0 / 12.0, 16 rows 16.6 / 17.5 / 14.4, 32 rows 31.5 / 22.8 / 19.9.
# The kernel's time grows with the rows (a GEMV kernel); past 16 rows dequantizing into one GEMM wins.
# fp32 and fp16 activations never take the kernel: at 1 row it ran 10x (fp32) and 11x (fp16) slower than with
# bf16, slower than their dense matmuls, and flat in the rows where dequantizing scales. Casting fp32 activations
# to bf16 to reach the fast kernel would change the numerics a user chose with dtype=float32, so fp32
# dequantizes: int8 saves memory there but pays off in speed only with bf16, the default on CPUs that have it.
KERNEL_MAX_ROWS = 16


def check_method(method: str | None) -> None:
    if method is not None and method not in METHODS:
        raise ConfigError(f"quantization={method!r} is not a known method; choose one of "
                          f"{', '.join(repr(m) for m in METHODS)}, or leave it unset for full-precision weights")


class Int8Linear(nn.Module):
    """y = x @ (weight * scale).T + bias, with weight int8 (out, in) and scale (out,), for x of any leading shape."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        assert weight.dtype == torch.int8 and scale.shape == (weight.size(0),)
        self.in_features, self.out_features = weight.size(1), weight.size(0)
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        weight = linear.weight.float()
        absmax = weight.abs().amax(dim=1)
        dtype = linear.weight.dtype
        # At least the dtype's smallest normal number: an all-zero row gets no 0 / 0, and an fp16 scale no
        # subnormal, which would round by far more than the 2^-9 (bf16) of a normal one. With that bound,
        # |weight| / scale <= 127.3, so rounding with the stored scale keeps every element within its half
        # and the clamp never cuts the absmax element.
        scale = (absmax / 127).clamp(min=torch.finfo(dtype).tiny).to(dtype)
        quantized = (weight / scale.float().unsqueeze(1)).round().clamp(-127, 127).to(torch.int8)
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        return cls(quantized, scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        scale = self.scale.to(x.dtype)  # no copy when it already is
        # In an exported graph whose batch is a symbol the row count is unknown: that graph dequantizes (freezing folds
        # the dequantized weight into a constant) rather than guard on the batch, which its export would refuse.
        if (x.device.type == "cpu" and x.dtype == torch.bfloat16
                and statically_known_true(rows.size(0) <= KERNEL_MAX_ROWS)):
            y = torch._weight_int8pack_mm(rows.contiguous(), self.weight, scale)
        else:
            y = F.linear(rows, self.weight.to(x.dtype)) * scale
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def quantize_model(model: nn.Module, method: str = "int8") -> nn.Module:
    """Replace every nn.Linear of `model.blocks` and `model.lm_head` with an Int8Linear, in place; returns `model`.

    A tied lm_head becomes its own int8 copy; the embedding stays as it is (a lookup reads one row per token).
    """
    check_method(method)
    targets = [(f"blocks.{name}", module) for name, module in model.blocks.named_modules()]
    targets.append(("lm_head", model.lm_head))
    for name, module in targets:
        if isinstance(module, nn.Linear) and not is_plain_linear(module):
            raise ConfigError(f"cannot quantize '{name}', a {type(module).__name__}: merge the adapters into the "
                              "weights first (lmstack.train.lora.merge_lora), then quantize")
        if is_plain_linear(module):
            replace_module(model, name, Int8Linear.from_linear(module))
    return model
