"""fp32 matmuls through oneDNN on AMD's AVX-512 CPUs: the Linear layers' forward and backward and the fused loss's.

PyTorch's fp32 `mm`/`addmm` on CPU call MKL's sgemm, which on this project's AMD EPYC (AVX-512, 2 cores)
runs at ~205 GFLOP/s; oneDNN's fp32 linear (`torch.ops.mkldnn._linear_pointwise`, what inductor calls for
compiled CPU models) reaches 440-470 GFLOP/s on the same shapes: `ONEDNN_VERBOSE=1` reports AVX-512
kernels, `MKL_VERBOSE=1` only a generic path (MKL is known not to pick its AVX-512 code on AMD).
Measured, 2 threads, GFLOP/s MKL / oneDNN: GPT-2 training shapes (2048 rows, 256 -> 768) forward
208 / 464, input gradient 205 / 472, weight gradient 205 / 320; a 1-row fp32 768 -> 50257 head 9.4 / 2.7 ms.
Below ~2M multiply-adds oneDNN's call overhead loses (1 row of 256 -> 768: 12 vs 22 us), so small products
stay on `F.linear`. Results equal F.linear's to fp32 rounding (another summation order). Where it runs is
`lmstack.device.onednn_fp32_faster` (AMD with AVX-512: on Intel, MKL has AVX-512 kernels of its own).

    linear(x, weight, bias)        # F.linear's values, faster where oneDNN is; differentiable
    matmul_nt / matmul_nn / matmul_tn(a, b)   # a @ b.T, a @ b, a.T @ b for 2-D fp32 CPU tensors

`torch.backends.mkldnn.enabled = False` turns the path off, as it does oneDNN elsewhere in PyTorch. Traced code
(`torch.compile`, which lowers matmuls itself), autocast and functorch transforms see `F.linear`; the oneDNN
backward is first-order only (no double backward).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmstack.device import onednn_fp32_faster

# Products smaller than this (rows x in x out multiply-adds) run faster on F.linear: oneDNN's per-call cost wins.
MIN_MULTIPLY_ADDS = 1 << 21


def onednn_allowed() -> bool:
    """Whether a direct oneDNN call may replace F.linear here, whatever the dtype: not in traced code (inductor
    lowers matmuls itself), not under CPU autocast or functorch transforms (they must see F.linear), and not with
    oneDNN switched off. is_compiling comes first: dynamo cannot trace the checks after it without graph breaks."""
    return (not torch.compiler.is_compiling() and torch._C._get_mkldnn_enabled()
            and not torch.is_autocast_enabled("cpu") and not torch._C._are_functorch_transforms_active())


def _onednn(*tensors: torch.Tensor) -> bool:
    return (all(t.is_cpu and t.dtype == torch.float32 for t in tensors) and onednn_fp32_faster()
            and onednn_allowed())


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias) by oneDNN; x (..., K), weight (N, K) plain (may be a transposed view) or prepacked."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, K) @ b (N, K).T"""
    return onednn_linear(a, b) if _onednn(a, b) else a @ b.t()


def matmul_nn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, K) @ b (K, N)"""
    return onednn_linear(a, b.t()) if _onednn(a, b) else a @ b


def matmul_tn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, N).T @ b (M, K) -> (N, K): a weight gradient, summed over the M rows."""
    if not _onednn(a, b):
        return a.t() @ b
    # oneDNN is fastest with the smaller side as the output's rows, even counting autograd's copy of the transposed
    # result into the weight's layout (2 threads, 2048 rows: 256 -> 4096 11 vs 30 ms, 768 -> 50257 506 vs 702 ms;
    # 768 -> 3072 is the exception, 31 vs 28 ms).
    if a.size(1) <= b.size(1):
        return onednn_linear(a.t(), b.t())
    return onednn_linear(b.t(), a.t()).t()


class _OneDnnLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        rows = x.reshape(-1, x.size(-1))
        ctx.save_for_backward(rows, weight)
        return onednn_linear(rows, weight, bias).view(*x.shape[:-1], weight.size(0))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        rows, weight = ctx.saved_tensors
        grad_rows = grad_out.reshape(-1, grad_out.size(-1))
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = matmul_nn(grad_rows, weight).view(*grad_out.shape[:-1], weight.size(1))
        if ctx.needs_input_grad[1]:
            grad_weight = matmul_tn(grad_rows, rows)
        if ctx.needs_input_grad[2]:  # False when there is no bias
            grad_bias = grad_rows.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias), through oneDNN for fp32 on CPU where that is faster (see `onednn_allowed`)."""
    # The size before the costlier checks: it settles every decode-sized product. Traced code skips it, so a
    # dynamic-shape graph gets no guard on the row count.
    if torch.compiler.is_compiling() or x.numel() * weight.size(0) < MIN_MULTIPLY_ADDS:
        return F.linear(x, weight, bias)
    tensors = (x, weight) if bias is None else (x, weight, bias)
    if not _onednn(*tensors):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _OneDnnLinear.apply(x, weight, bias)
    return onednn_linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear computed by `linear`: the same parameters and state_dict, F.linear's values to fp32 rounding."""

    is_plain_linear = True  # computes F.linear (see lmstack.model.gpt.is_plain_linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
