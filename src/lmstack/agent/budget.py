"""Per-run budgets (steps, tokens, wall time, dollars) and the per-model price table.

The check runs before every model call, with the cost of the prompt about to be sent included
(estimated as at least the previous prompt), so a run at or over its dollar budget never makes the
next call, and a call that would cross the budget with its prompt alone is not made either.
"""

from __future__ import annotations

from dataclasses import dataclass

# US dollars per million tokens (input, output), list prices. A model not listed costs 0 unless the
# run sets price_in_per_mtok / price_out_per_mtok (our own server and other local endpoints are free).
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}


@dataclass
class BudgetConfig:
    max_steps: int = 20
    max_tokens: int = 200_000
    max_wall_s: float = 600.0
    max_dollars: float | None = None
    price_in_per_mtok: float | None = None
    price_out_per_mtok: float | None = None


@dataclass
class Spend:
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def prices(model: str, budget: BudgetConfig) -> tuple[float, float]:
    listed = PRICES_PER_MTOK.get(model, (0.0, 0.0))
    return (budget.price_in_per_mtok if budget.price_in_per_mtok is not None else listed[0],
            budget.price_out_per_mtok if budget.price_out_per_mtok is not None else listed[1])


def call_cost(model: str, budget: BudgetConfig, prompt_tokens: int, completion_tokens: int) -> float:
    price_in, price_out = prices(model, budget)
    return (prompt_tokens * price_in + completion_tokens * price_out) / 1e6


def over_budget(spend: Spend, budget: BudgetConfig, model: str, next_prompt_tokens: int) -> str | None:
    """Why the next model call must not happen, or None."""
    if spend.steps >= budget.max_steps:
        return f"steps: {spend.steps} of max_steps={budget.max_steps} used"
    if spend.tokens >= budget.max_tokens:
        return f"tokens: {spend.tokens} of max_tokens={budget.max_tokens} used"
    if spend.wall_s >= budget.max_wall_s:
        return f"wall time: {spend.wall_s:.1f} s of max_wall_s={budget.max_wall_s:g} used"
    if budget.max_dollars is not None:
        next_cost = call_cost(model, budget, next_prompt_tokens, 0)
        if spend.cost_usd + next_cost > budget.max_dollars:
            return (f"dollars: ${spend.cost_usd:.6f} spent, the next prompt would cost ${next_cost:.6f}, "
                    f"max_dollars={budget.max_dollars:g}")
    return None


def unpriced_dollar_budget(model: str, budget: BudgetConfig) -> str | None:
    """Why `budget.max_dollars` cannot stop a run on `model`, or None: every call of a model without a price (our own
    server, other local endpoints, a model the table above lacks) costs $0. (max_dollars=0 means "free models only",
    which such a model is.)"""
    priced = (model in PRICES_PER_MTOK or budget.price_in_per_mtok is not None
              or budget.price_out_per_mtok is not None)  # prices of 0 set on purpose say the model is free
    if not budget.max_dollars or priced:
        return None
    return (f"budget.max_dollars={budget.max_dollars:g} has no effect: model '{model}' has no price, so its calls "
            "cost $0; set budget.price_in_per_mtok and budget.price_out_per_mtok (dollars per million tokens)")
