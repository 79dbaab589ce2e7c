"""The output projection and the cross-entropy as one autograd op, for eager fp32 training on the CPU.

`F.cross_entropy(logits)` makes four more (N, V) passes than it needs: forward saves a log-softmax, and
backward zero-fills a one-hot, scatters into it, then builds the log-softmax gradient from two (N, V)
tensors. On a CPU that is memory-bound for these passes, computing the gradient with respect to the
logits (softmax minus one-hot) already in the forward pass, in place, leaves backward with only the two
matmuls: ~7% of a whole GPT-2 training step measured in bench/train_throughput.py's setting.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmstack.model.onednn_linear import linear, matmul_nn, matmul_nt, matmul_tn

IGNORE_INDEX = -1


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, reduction: str):
        logits = matmul_nt(x, weight)
        kept = targets != IGNORE_INDEX
        safe_targets = targets.clamp(min=0).unsqueeze(1)
        grad_logits = torch.log_softmax(logits, dim=1)  # one vectorised pass; its exp is the softmax
        losses = grad_logits.gather(1, safe_targets).squeeze(1).neg_().masked_fill_(~kept, 0.0)
        grad_logits.exp_().scatter_add_(1, safe_targets, torch.full_like(safe_targets, -1, dtype=logits.dtype))
        grad_logits.index_fill_(0, (~kept).nonzero().squeeze(1), 0.0)
        n_kept = kept.sum()
        ctx.reduction = reduction
        ctx.save_for_backward(x, weight, grad_logits, n_kept)
        ctx.mark_non_differentiable(logits)
        ctx.set_materialize_grads(False)  # or backward gets an (N, V) zero gradient for the logits: 3% of a step
        if reduction == "none":
            return losses, logits
        # mean: nan when every target is ignored, as F.cross_entropy
        return (losses.sum() / n_kept if reduction == "mean" else losses.sum()), logits

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _unused: torch.Tensor | None):
        x, weight, grad_logits, n_kept = ctx.saved_tensors
        if ctx.reduction == "none":
            grad_logits, scale = grad_logits * grad_loss.unsqueeze(1), None
        else:
            # A scalar scales the (N, C) and (V, C) results, cheaper than the (N, V) gradient; and the saved
            # gradient stays unchanged, so a retained graph can run backward again.
            scale = grad_loss / n_kept if ctx.reduction == "mean" else grad_loss

        def scaled(grad: torch.Tensor) -> torch.Tensor:
            return grad if scale is None else grad.mul_(scale)

        grad_x = scaled(matmul_nn(grad_logits, weight)) if ctx.needs_input_grad[0] else None
        grad_weight = scaled(matmul_tn(grad_logits, x)) if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight, None, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """logits (N, V) of any dtype, targets (N,) with -1 = ignored; computed in fp32."""
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction=reduction)


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, C), weight (V, C), targets (N,) -> (loss, logits (N, V)); values as `cross_entropy(x @ weight.T)`.

    The fused op runs where it was measured faster: eager fp32 training on the CPU; its logits are then
    detached (differentiate the loss). Elsewhere (GPU, autocast, torch.compile, which fuses the loss
    itself, no_grad) it is the plain projection and `cross_entropy`.
    """
    fused = (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
             and torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
             and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())
    if fused:
        return _LinearCrossEntropy.apply(x, weight, targets, reduction)
    logits = linear(x, weight)
    return cross_entropy(logits, targets, reduction), logits
