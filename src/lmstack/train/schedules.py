"""Learning-rate schedules as pure functions of the step: the schedule's whole state is the step number.

`lr_multiplier(step)` is in [0, 1] and scales every param group's base lr, so the schedule restores
exactly on resume without a state of its own.
"""

from __future__ import annotations

import math

from lmstack.train.config import TrainConfig


def lr_multiplier(cfg: TrainConfig, step: int) -> float:
    """Multiplier of the base lr for optimizer step `step` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps  # linear warmup that never multiplies by 0
    floor = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    # warmup-stable-decay: flat at the peak, then a linear decay over the last `decay_fraction` of steps
    decay_steps = max(1, round(cfg.max_steps * cfg.decay_fraction))
    decay_start = cfg.max_steps - decay_steps
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    return 1.0 - (1 - floor) * progress


def set_lr(optimizers, multiplier: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * multiplier
