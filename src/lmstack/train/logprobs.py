"""Per-token log-probabilities of given targets: the quantity DPO and GRPO are written in."""

from __future__ import annotations

import torch

from lmstack.model.gpt import GPT


def token_logprobs(model: GPT, inputs: torch.Tensor, targets: torch.Tensor, *,
                   positions: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) log p(targets[b, t] | inputs[b, :t+1]); 0 where the target is -1 (not scored).

    The model's own per-token cross-entropy is exactly -log p, computed in fp32 without materialising
    a second (B, T, V) log-softmax.
    """
    _, loss = model(inputs, targets, positions=positions, attn_mask=attn_mask, loss_reduction="none")
    return -loss.view(targets.shape)
