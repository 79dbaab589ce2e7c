"""The engine's per-sequence logits-constraint hook (what the server's structured output builds on)."""

import torch
from infer_helpers import tiny_model

from lmstack.infer.engine import Engine, EngineConfig
from lmstack.infer.params import SamplingParams


class AllowedSet:
    """Allows only `allowed` tokens and records what the engine told it was sampled."""

    def __init__(self, allowed: set[int]):
        self.allowed = allowed
        self.seen: list[int] = []

    def allowed_tokens(self, vocab_size: int) -> torch.Tensor:
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        mask[sorted(self.allowed)] = True
        return mask

    def advance(self, token_id: int) -> None:
        self.seen.append(token_id)


@torch.no_grad()
def masked_greedy(model, prompt: list[int], allowed: set[int], steps: int) -> list[int]:
    """Reference: no cache, full forward per token, argmax over the allowed tokens only."""
    ids = list(prompt)
    blocked = torch.ones(model.cfg.vocab_size, dtype=torch.bool)
    blocked[sorted(allowed)] = False
    for _ in range(steps):
        logits, _ = model(torch.tensor([ids]))
        ids.append(int(logits[0, -1].masked_fill(blocked, float("-inf")).argmax()))
    return ids[len(prompt):]


def test_greedy_under_a_constraint_matches_masked_recompute(arch):
    model = tiny_model(arch)
    engine = Engine(model, None, EngineConfig(num_blocks=32, dtype="float32"))
    allowed = set(range(0, 300, 7))
    made: list[AllowedSet] = []

    def factory():
        made.append(AllowedSet(allowed))
        return made[-1]

    prompt = [5, 9, 11, 200]
    constrained, free = engine.generate([prompt, prompt], [SamplingParams(max_tokens=12, temperature=0, constraint=factory),
                                                         SamplingParams(max_tokens=12, temperature=0)])
    assert constrained.token_ids == masked_greedy(model, prompt, allowed, 12)
    assert made[0].seen == constrained.token_ids  # the constraint was advanced with every sampled token
    assert any(t not in allowed for t in free.token_ids)  # the unconstrained neighbour in the batch was untouched


def test_each_of_n_samples_gets_its_own_constraint(arch):
    engine = Engine(tiny_model(arch), None, EngineConfig(num_blocks=32, dtype="float32"))
    made: list[AllowedSet] = []

    def factory():
        made.append(AllowedSet({3, 4, 5}))
        return made[-1]

    out = engine.generate([1, 2, 3], SamplingParams(max_tokens=8, temperature=1.0, seed=0, n=3, constraint=factory))
    assert len(made) == 3
    for sample, constraint in zip(out[0].outputs, made):
        assert set(sample.token_ids) <= {3, 4, 5}
        assert constraint.seen == sample.token_ids
