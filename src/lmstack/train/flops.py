"""The model FLOPs a training step runs, which MFU divides by the devices' peak (lmstack.train.metrics.mfu)."""

from __future__ import annotations

import torch

from lmstack.model.gpt import GPT


def pass_flops_per_token(model: GPT, seq_len: int, backward: bool = True) -> float:
    """Model FLOPs per token of rows `seq_len` long, forward and backward: 6N plus attention (PaLM, App. B).

    A forward alone is a third of that. The backward's weight gradients (2N of the 6N) are computed only for
    the weights that train, so a LoRA step counts about 4N: counting 6N made a LoRA run's MFU look a third
    better than it was. Embeddings are lookups (no FLOPs), unless tied to the output layer's matmul.
    """
    full = model.flops_per_token(seq_len)
    if not backward:
        return full / 3
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    lookups = [model.pos_emb] + ([] if model.cfg.tied else [model.tok_emb])
    frozen -= sum(e.weight.numel() for e in lookups if e is not None and not e.weight.requires_grad)
    return full - 2 * frozen


def scored_rows_flops(model: GPT, inputs: torch.Tensor, reference_pass: bool) -> float:
    """Model FLOPs of a step over padded rows (DPO's pairs, GRPO's samples): the policy's forward and backward
    over every position computed, padding included, plus the reference model's forward when it runs."""
    rows, length = inputs.shape
    per_token = pass_flops_per_token(model, length)
    if reference_pass:
        per_token += pass_flops_per_token(model, length, backward=False)
    return rows * length * per_token
