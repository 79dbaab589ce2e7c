"""Validation loss, bits per byte, and a few samples, computed at each eval of the training loop.

Bits per byte divides the summed loss (converted to bits) by the UTF-8 bytes the target tokens stand
for, so it compares models with different tokenizers; special tokens stand for no text and are left
out of both sums, as in nanochat.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable

import torch

from lmstack.infer.simple import generate
from lmstack.model.gpt import GPT
from lmstack.tokenizer import Tokenizer
from lmstack.train.distributed import sum_across_ranks


def token_byte_lengths(tokenizer: Tokenizer, vocab_size: int, device: torch.device) -> torch.Tensor:
    """(vocab_size,) UTF-8 bytes per token id; 0 for special tokens and for ids past the tokenizer's vocab."""
    special = set(tokenizer.special.values())
    lengths = [0 if i in special or i >= tokenizer.vocab_size else len(tokenizer.token_bytes(i))
               for i in range(vocab_size)]
    return torch.tensor(lengths, dtype=torch.int64, device=device)


@torch.no_grad()
def evaluate(model: GPT, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], byte_lengths: torch.Tensor,
             autocast: Callable[[], contextlib.AbstractContextManager]) -> dict[str, float]:
    """Mean val loss (nats/token) and bits per byte over `batches`, summed across all ranks."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=byte_lengths.device)  # nats, tokens, bytes
    for x, y in batches:
        with autocast():
            _, nats = model(x, y, loss_reduction="none")
        targets = y.flatten().clamp(min=0)
        counted = (y.flatten() >= 0) & (byte_lengths[targets] > 0)
        totals += torch.stack([nats[counted].double().sum(), counted.sum().double(),
                               byte_lengths[targets][counted].double().sum()])
    model.train(was_training)
    nats, tokens, nbytes = sum_across_ranks(totals).tolist()
    return {"val_loss": nats / max(tokens, 1), "val_bpb": nats / math.log(2) / max(nbytes, 1)}


def draw_samples(model: GPT, tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int,
                 temperature: float, top_k: int, seed: int) -> list[str]:
    """One continuation per prompt, seeded so the samples of successive evals are comparable."""
    was_training = model.training
    model.eval()
    texts = []
    for i, prompt in enumerate(prompts):
        prefix = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
        ids = prefix + tokenizer.encode(prompt)
        new = generate(model, ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed + i,
                       stop_ids=tokenizer.stop_ids)
        texts.append(prompt + tokenizer.decode(new))
    model.train(was_training)
    return texts
