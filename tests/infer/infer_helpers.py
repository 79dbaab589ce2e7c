"""Helpers shared by the engine tests: tiny models and the no-cache greedy reference."""

import torch

from lmstack.model.config import ModelConfig
from lmstack.model.gpt import build_model

PROMPTS = [[1, 2, 3], [5] * 21, list(range(10, 70)), [7]]  # token ids: short, repeated, long, one token
TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3, "Hello world! Héllo wörld, naïve café. " * 3,
         "stop STOP halt END done. 1 2 3 4 5 6 7 8 9 10. " * 3, "日本語のテキスト、絵文字 🙂 too. " * 2]


def tiny_config(arch: str, vocab_size: int = 320, block_size: int = 320) -> ModelConfig:
    return ModelConfig(arch=arch, vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=4,
                       n_kv_head=2 if arch == "llama" else None, n_embd=64)


def tiny_model(arch: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    model = build_model(tiny_config(arch, **kwargs), seed=seed).eval()
    # Random init at std 0.02 gives nearly flat logits; sharpen them so greedy ties never happen by accident.
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return model


@torch.no_grad()
def recompute_greedy_batch(model, prompts: list[list[int]], steps: int) -> list[list[int]]:
    """The reference: a full forward over every whole sequence for every token, no cache. Sequences are
    right-padded into one batch: under the causal mask, padding after a token cannot change its logits."""
    seqs = [list(p) for p in prompts]
    for _ in range(steps):
        longest = max(map(len, seqs))
        logits, _ = model(torch.tensor([s + [0] * (longest - len(s)) for s in seqs]))
        for i, s in enumerate(seqs):
            s.append(int(logits[i, len(s) - 1].argmax()))
    return [s[len(p):] for s, p in zip(seqs, prompts)]


def recompute_greedy(model, prompt: list[int], steps: int) -> list[int]:
    return recompute_greedy_batch(model, [prompt], steps)[0]
