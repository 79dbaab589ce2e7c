"""Loss guards: a non-finite loss or gradient, or a loss spike over the recent median, marks a bad step.

The loop then skips the step (no optimizer update) or rolls back to the last checkpoint, per
`guard.action`. The guard's history is part of the train state, so a resumed run judges spikes
exactly as the uninterrupted one would.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

from lmstack.errors import LmstackError
from lmstack.train.config import GuardConfig


class TrainingDiverged(LmstackError):
    """Too many bad steps in a row: the run itself is broken, not one batch."""


class LossGuard:
    def __init__(self, cfg: GuardConfig):
        self.cfg = cfg
        self.recent: deque[float] = deque(maxlen=cfg.window)
        self.bad_in_a_row = 0

    def check(self, loss: float, grad_norm: float) -> str | None:
        """The reason this step is bad, or None if it may update the weights."""
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if not math.isfinite(grad_norm):
            return f"gradient norm is {grad_norm}"
        if self.cfg.spike_factor > 0 and len(self.recent) >= self.cfg.min_history:
            median = statistics.median(self.recent)
            if loss > self.cfg.spike_factor * median:
                return f"loss {loss:.4f} is over {self.cfg.spike_factor}x the recent median {median:.4f}"
        return None

    def accept(self, loss: float) -> None:
        self.recent.append(loss)
        self.bad_in_a_row = 0

    def reject(self, step: int, reason: str) -> None:
        self.bad_in_a_row += 1
        if self.bad_in_a_row >= self.cfg.max_bad_steps:
            raise TrainingDiverged(
                f"{self.bad_in_a_row} bad steps in a row (last at step {step}: {reason}); lower lr, "
                f"raise warmup_steps or check the data; the last good checkpoint is kept")

    def state_dict(self) -> dict:
        return {"recent": list(self.recent), "bad_in_a_row": self.bad_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.recent = deque(state["recent"], maxlen=self.cfg.window)
        self.bad_in_a_row = state["bad_in_a_row"]
