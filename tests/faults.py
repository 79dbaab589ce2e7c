"""Faults the tests inject into the real code paths: a structured-output grammar with a bug, so that the engine step
that applies it raises (what a failed step must and must not take down with it); an engine whose bookkeeping between
steps raises (what the server's engine thread does with an error outside a step)."""

from __future__ import annotations

import torch

from lmstack.infer.engine import Engine

MASK_MISMATCH = "must match the existing size"  # torch's words for the mask one column short


class BrokenConstraint:
    """Its mask has one column too few, so the step that applies it raises."""

    def allowed_tokens(self, vocab_size: int) -> torch.Tensor:
        return torch.ones(vocab_size - 1, dtype=torch.bool)

    def advance(self, token_id: int) -> None:
        pass


FAULT_BETWEEN_STEPS = "bookkeeping between steps failed"


class EngineFailingBetweenSteps(Engine):
    """A real engine whose `has_unfinished`, which the server's engine thread asks before each step, raises once a
    request has come in."""

    def has_unfinished(self) -> bool:
        if super().has_unfinished():
            raise RuntimeError(FAULT_BETWEEN_STEPS)
        return False
