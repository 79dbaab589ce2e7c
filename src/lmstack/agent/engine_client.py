"""The in-process model client: our engine and our chat template, no HTTP in between.

It returns the same `ModelResponse` as `OpenAIClient` -- text, tool calls parsed from the template's
<|tool_call|> markers, usage, and per-token logprobs with the top alternatives -- so the runtime,
the monitors and the eval harness cannot tell the two apart.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from lmstack.agent.client import ModelCallError, ModelResponse, TokenLogprob, ToolCall, Usage

TOP_LOGPROBS = 5
DEFAULT_MAX_TOKENS = 512


class EngineClient:
    def __init__(self, engine, model: str = "local", checkpoint: str = ""):
        self.engine = engine
        self.model = model
        self.checkpoint = checkpoint
        self._lock = threading.Lock()  # the engine's step() must be driven from one thread at a time

    @property
    def context_tokens(self) -> int:
        return self.engine.model.cfg.block_size

    def count_tokens(self, messages: list[dict], tools: list[dict] | None = None) -> int:
        """Exact prompt length under our chat template, tool schemas included (the runtime fits the
        conversation with it; the schemas alone can be half of a small model's context)."""
        return len(self.engine.tokenizer.render(messages, tools, add_generation_prompt=True).ids)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "EngineClient":
        from lmstack.infer.engine import Engine
        from lmstack.model.checkpoint import no_tokenizer

        path = Path(path)
        engine = Engine.from_checkpoint(path)
        if engine.tokenizer is None:  # every call renders a chat or a text
            raise no_tokenizer(path)
        return cls(engine, model=path.name, checkpoint=str(path.resolve()))

    def complete(self, messages: list[dict], tools: list[dict] | None = None, *, temperature: float = 0.0,
                 max_tokens: int | None = None, logprobs: bool = False, seed: int | None = None) -> ModelResponse:
        from lmstack.infer.params import SamplingError, SamplingParams

        tokenizer = self.engine.tokenizer
        prompt = tokenizer.render(messages, tools, add_generation_prompt=True).ids
        room = self.engine.model.cfg.block_size - len(prompt)
        params = SamplingParams(max_tokens=max(1, min(max_tokens or DEFAULT_MAX_TOKENS, room)), temperature=temperature,
                                seed=seed, logprobs=TOP_LOGPROBS if logprobs else None)
        try:
            with self._lock:
                output = self.engine.generate([prompt], params)[0]
        except SamplingError as err:
            raise ModelCallError(f"model '{self.model}': {err}") from None
        content, parsed = tokenizer.parse_assistant(output.text)
        calls = [ToolCall(f"call_{i}", call.name or "", json.dumps(call.arguments) if call.arguments is not None
                          else call.raw) for i, call in enumerate(parsed)]
        token_logprobs = None
        if logprobs and output.logprobs is not None:
            token_logprobs = [TokenLogprob(tokenizer.token_str(e.token_id), e.logprob,
                                           [(tokenizer.token_str(t), lp) for t, lp in e.top]) for e in output.logprobs]
        finish = "tool_calls" if calls else ("length" if output.finish_reason == "length" else "stop")
        return ModelResponse(content, calls, Usage(len(prompt), len(output.token_ids)), token_logprobs, finish, self.model)
