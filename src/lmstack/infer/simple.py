"""Plain generation for one prompt over a dense KV cache: the training loop's samples and the reference
the paged engine is checked against. No batching, no scheduling; the same sampler as the engine.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from lmstack.infer.sampler import RowSettings, sample
from lmstack.model.gpt import GPT


class DenseKVCache:
    """Preallocated k, v of shape (n_layer, B, K, max_len, D); `length` tokens are filled so far."""

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (n_layer, batch, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.n_layer = n_layer
        self.length = 0

    @classmethod
    def for_model(cls, model: GPT, batch: int, max_len: int) -> "DenseKVCache":
        cfg = model.cfg
        weight = model.tok_emb.weight
        return cls(cfg.n_layer, batch, cfg.kv_heads, max_len, cfg.head_dim, weight.dtype, weight.device)

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        start, new = self.length, q.size(2)
        end = start + new
        self.k[layer_idx, :, :, start:end] = k
        self.v[layer_idx, :, :, start:end] = v
        keys, values = self.k[layer_idx, :, :, :end], self.v[layer_idx, :, :, :end]
        mask = None
        if new > 1:  # query i sits at position start + i and sees keys 0 .. start + i
            mask = torch.arange(end, device=q.device) <= torch.arange(start, end, device=q.device).unsqueeze(1)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
        if layer_idx == self.n_layer - 1:
            self.length = end
        return y


@torch.inference_mode()
def generate(model: GPT, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, seed: int | None = None, stop_ids: Iterable[int] = ()) -> list[int]:
    """Prefill the prompt in one forward, then one token per step; returns the new ids (a stop id ends
    generation and is not returned). Stops early at the model's block_size."""
    if not prompt_ids:
        raise ValueError("generate() needs at least one prompt token (e.g. the tokenizer's bos_id)")
    device = model.tok_emb.weight.device
    max_new_tokens = max(0, min(max_new_tokens, model.cfg.block_size - len(prompt_ids)))
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed) if seed is not None else generator.seed()
    row = RowSettings(temperature=temperature, top_k=top_k or 0, generator=generator)
    stop = set(stop_ids)
    cache = DenseKVCache.for_model(model, 1, len(prompt_ids) + max_new_tokens)
    idx = torch.tensor([prompt_ids], device=device)
    out: list[int] = []
    for _ in range(max_new_tokens):
        positions = torch.arange(cache.length, cache.length + idx.size(1), device=device).unsqueeze(0)
        last = torch.tensor([idx.size(1) - 1], device=device)
        logits, _ = model(idx, positions=positions, kv_cache=cache, logits_at=last)
        next_id = sample(logits, [row])
        token = int(next_id.item())  # the caller wants ids; one sync per token is the price of stop ids
        if token in stop:
            break
        out.append(token)
        idx = next_id.view(1, 1)
    return out
