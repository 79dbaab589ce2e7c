"""Per-request sampling settings, shaped like vLLM's `SamplingParams` (and OpenAI's request fields)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

from lmstack.errors import LmstackError

if TYPE_CHECKING:
    import torch


class SamplingError(LmstackError):
    """A sampling setting out of range, or a request the engine can never serve; `param` names the setting."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


SEED_RANGE = (-2**63, 2**63)  # int64, as vLLM takes; the engine seeds sequence i with seed + i, which torch accepts
# OpenAI's documented range for logit_bias values (+-100 already bans or forces a token; 1e308 made the logits inf
# and every later step fail). The server clamps to it, as vLLM's server does; the engine refuses what lies outside,
# except -inf, a hard ban (the server's tool_choice "none" bans the tool-call token with it).
LOGIT_BIAS_RANGE = (-100.0, 100.0)


def _is_int(value) -> bool:
    """An integer of any kind (Python's, numpy's) but not a bool: logprobs=True would mean "1" by accident."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A finite real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_list_of(value, item_ok) -> bool:
    return isinstance(value, (list, tuple)) and all(map(item_ok, value))


_OPTIONAL = ("max_tokens", "seed", "logprobs", "prompt_logprobs")  # None: to the end of the context, random, off
_KINDS = {  # setting -> (the check of its type, what it must be)
    **{name: (_is_int, "an integer") for name in ("max_tokens", "min_tokens", "top_k", "n", *_OPTIONAL[1:])},
    **{name: (_is_number, "a finite number") for name in ("temperature", "top_p", "min_p", "repetition_penalty",
                                                          "frequency_penalty", "presence_penalty")},
    "ignore_eos": (lambda v: isinstance(v, bool), "True or False"),
    "include_stop_str_in_output": (lambda v: isinstance(v, bool), "True or False"),
    "stop": (lambda v: _is_list_of(v, lambda s: isinstance(s, str)), "a string or a list of strings"),
    "stop_token_ids": (lambda v: _is_list_of(v, _is_int), "a list of integer token ids"),
    "logit_bias": (lambda v: isinstance(v, dict) and all(map(_is_int, v)), "a dict of integer token id -> bias"),
}


def _bias_ok(value) -> bool:
    return value == float("-inf") or (_is_number(value) and LOGIT_BIAS_RANGE[0] <= value <= LOGIT_BIAS_RANGE[1])


class LogitsConstraint(Protocol):
    """Which tokens one sequence may sample next (a grammar, say); the hook for structured output."""

    def allowed_tokens(self, vocab_size: int) -> torch.Tensor:
        """A (vocab_size,) bool tensor on the CPU: True where the token may come next."""

    def advance(self, token_id: int) -> None:
        """The sequence sampled `token_id`; move past it."""


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int | None = 16  # None = up to the end of the model's context (as vLLM)
    min_tokens: int = 0  # no stop token, eos or stop string ends a sequence before this many tokens (as vLLM)
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF/CTRL style over prompt and output: >1 discourages repeats
    frequency_penalty: float = 0.0  # OpenAI style over the output: minus penalty * count
    presence_penalty: float = 0.0  # OpenAI style over the output: minus penalty once a token appeared
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)  # matched on the text, not emitted (a str is one stop string)
    include_stop_str_in_output: bool = False  # True: the text ends with the stop string that ended it (as vLLM)
    stop_token_ids: list[int] = field(default_factory=list)  # on top of the tokenizer's stop ids
    ignore_eos: bool = False  # True: only max_tokens, stop strings and stop_token_ids end a sequence
    logprobs: int | None = None  # None = off; k = the sampled token's logprob and the top k
    prompt_logprobs: int | None = None  # None = off; k = each prompt token's logprob and the top k
    constraint: Callable[[], LogitsConstraint] | None = None  # a factory, called once per sequence (n of them)

    def __post_init__(self):
        if isinstance(self.stop, str):  # stop="###" is one stop string, as in vLLM and OpenAI's API
            self.stop = [self.stop]

    def validate(self, vocab_size: int | None = None) -> "SamplingParams":
        self._check_types()  # first: the range checks below compare, which a str or None cannot
        checks = [  # (ok, the setting, the message)
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens",
             f"max_tokens must be at least 1 (or None: up to the end of the context), got {self.max_tokens}"),
            (0 <= self.min_tokens and (self.max_tokens is None or self.min_tokens <= self.max_tokens), "min_tokens",
             f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}"),
            (self.seed is None or SEED_RANGE[0] <= self.seed < SEED_RANGE[1], "seed",
             f"seed must fit in 64 bits, [-2**63, 2**63), got {self.seed}"),
            (self.temperature >= 0, "temperature", f"temperature must be >= 0 (0 = greedy), got {self.temperature}"),
            (0 < self.top_p <= 1, "top_p", f"top_p must be in (0, 1], got {self.top_p}"),
            (self.top_k >= -1, "top_k", f"top_k must be >= 0 (0 or -1 = off), got {self.top_k}"),
            (0 <= self.min_p <= 1, "min_p", f"min_p must be in [0, 1], got {self.min_p}"),
            (self.repetition_penalty > 0, "repetition_penalty",
             f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty",
             f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty",
             f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (self.n >= 1, "n", f"n must be at least 1, got {self.n}"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs",
             f"logprobs must be in [0, 20], got {self.logprobs}"),
            (self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20, "prompt_logprobs",
             f"prompt_logprobs must be in [0, 20], got {self.prompt_logprobs}"),
            (all(self.stop), "stop", f"stop strings must be non-empty, got {self.stop!r}"),
            # A grammar ends the output once its value is complete (it then allows only the stop token), which
            # min_tokens would forbid: the sampler would be left no token at all.
            (self.constraint is None or self.min_tokens == 0, "min_tokens",
             "min_tokens cannot be combined with a logits constraint (the server's response_format or a forced tool "
             "call): the grammar ends the output when it is complete; leave min_tokens out"),
            (all(map(_bias_ok, self.logit_bias.values())), "logit_bias",
             f"logit_bias values must be in [{LOGIT_BIAS_RANGE[0]:g}, {LOGIT_BIAS_RANGE[1]:g}], OpenAI's range (or "
             f"-inf to ban a token), got { {t: b for t, b in self.logit_bias.items() if not _bias_ok(b)} }; "
             "clamp them"),
        ]
        if vocab_size is not None:
            for name, ids in (("logit_bias", list(self.logit_bias)), ("stop_token_ids", self.stop_token_ids)):
                bad = [t for t in ids if not 0 <= int(t) < vocab_size]
                checks.append((not bad, name, f"{name}: token ids {bad[:5]} are outside the vocab [0, {vocab_size})"))
        for ok, param, message in checks:
            if not ok:
                raise SamplingError(message, param=param)
        return self

    def _check_types(self) -> None:
        """Each setting's type, so that a wrong one is refused here, not met as a crash in the middle of a step."""
        for name, (ok, kind) in _KINDS.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            if not ok(value):
                kind += " or None" if name in _OPTIONAL else ""
                raise SamplingError(f"{name} must be {kind}, got {value!r} ({type(value).__name__})", param=name)

    @property
    def needs_penalties(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.frequency_penalty != 0.0 or self.presence_penalty != 0.0
                or bool(self.logit_bias))
