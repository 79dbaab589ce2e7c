"""The agent run's configuration: model, tools, context, budgets, loop limits, monitor policies.

Saved as JSON with the run, so `resume` and `approve` rebuild exactly the same agent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmstack.agent.budget import BudgetConfig
from lmstack.agent.context import KEEP_TOOL_CHARS
from lmstack.config import ConfigError

POLICIES = ("off", "flag", "retry", "stop")


@dataclass
class LoopConfig:
    repeat_limit: int = 3  # the same tool call with the same arguments this many times stops the run
    no_progress_limit: int = 5  # this many steps in a row without a new successful tool result stops it

    def validate(self) -> None:
        require_positive("loops.", self, ("repeat_limit", "no_progress_limit"))


@dataclass
class MonitorConfig:
    grounding: str = "flag"
    action_claims: str = "flag"
    uncertainty: str = "flag"
    tool_hallucination: str = "flag"
    self_consistency: str = "off"  # opt-in: costs self_consistency_k extra sampled calls per final answer
    self_consistency_k: int = 3
    sample_temperature: float = 1.0
    max_retries: int = 1  # "retry" re-asks at most this many times per step, then only flags

    def validate(self) -> None:
        for name in ("grounding", "action_claims", "uncertainty", "tool_hallucination", "self_consistency"):
            if getattr(self, name) not in POLICIES:
                raise ConfigError(f"monitors.{name} = {getattr(self, name)!r}: use one of {', '.join(POLICIES)}")
        require_positive("monitors.", self, ("self_consistency_k",))
        require_positive("monitors.", self, ("sample_temperature", "max_retries"), or_zero=True)


@dataclass
class AgentConfig:
    model: str = ""  # http(s) base URL of an OpenAI-compatible endpoint, or a checkpoint dir
    model_name: str = ""  # the endpoint's model id (default: the first one /v1/models lists)
    api_key_env: str = "OPENAI_API_KEY"  # the key itself is never stored with the run
    tools: list[str] = field(default_factory=lambda: ["calculator"])
    workspace: str = ""  # default: $LMSTACK_HOME/workspaces/RUN_ID
    system_prompt: str = "You are a careful assistant. Use the tools to find facts; do not invent them."
    agent_name: str = "default"
    user: str = "default"
    context_tokens: int = 8192
    max_output_tokens: int | None = None
    temperature: float = 0.0
    logprobs: bool = True
    stream: bool = False
    timeout_s: float = 60.0
    max_attempts: int = 4
    # A tool result longer than this keeps its head and tail (the model, the journal and a resume see the same
    # text): a tool that prints 500 MB must not put it in the database. ~25k tokens, more than most prompts hold.
    max_tool_output_chars: int = 100_000
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    loops: LoopConfig = field(default_factory=LoopConfig)
    monitors: MonitorConfig = field(default_factory=MonitorConfig)

    def validate(self) -> None:
        require_positive("", self, ("context_tokens", "max_output_tokens", "timeout_s", "max_attempts"))
        if self.max_tool_output_chars < KEEP_TOOL_CHARS:  # less leaves the cut's note and next to nothing of the output
            raise ConfigError(f"max_tool_output_chars = {self.max_tool_output_chars!r}: must be >= {KEEP_TOOL_CHARS} "
                              "(the head and tail of a long tool output, around a note of what was cut)")
        require_positive("", self, ("temperature",), or_zero=True)  # 0 = greedy
        # The budget is checked here, with the other settings: budget.py, which this file imports, cannot.
        require_positive("budget.", self.budget, ("max_steps", "max_tokens", "max_wall_s"))
        require_positive("budget.", self.budget, ("max_dollars", "price_in_per_mtok", "price_out_per_mtok"),
                         or_zero=True)  # max_dollars=0: only free models may be called


def require_positive(prefix: str, config: object, names: tuple[str, ...], or_zero: bool = False) -> None:
    """Refuse, before the run starts, counts and limits that cannot work: budget.max_steps=-1 ended every run as
    budget_exceeded after 0 steps, max_attempts=0 made no model call at all, a negative price paid the run."""
    for name in names:
        value = getattr(config, name)
        if value is not None and (value < 0 if or_zero else value <= 0):
            raise ConfigError(f"{prefix}{name} = {value!r}: must be {'>= 0' if or_zero else '> 0'}")
